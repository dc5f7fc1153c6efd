"""The HumanEval sandbox: every canonical solution passes, a stub fails, hostile programs are contained."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import trio

from orchestrator.evals.sandbox import Limits, run_program
from orchestrator.evals.scoring import humaneval_program
from orchestrator.evals.suites import HumanEval
from tests.conftest import pid_alive, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the limits tested are POSIX ones")


async def test_all_164_canonical_solutions_pass_and_stubs_fail() -> None:
    questions = HumanEval().questions()
    assert len(questions) == 164
    failures: list[str] = []
    pending = iter(questions)

    async def worker() -> None:
        for question in pending:
            extra = question.extra
            program = humaneval_program(extra["prompt"], extra["canonical_solution"], extra["test"],
                                        extra["entry_point"])  # fmt: skip
            outcome = await run_program(program, Limits(timeout_s=10))
            if not outcome.passed:
                failures.append(f"{question.id}: {outcome.status} {outcome.detail}")

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
    assert failures == []
    first = questions[0].extra
    stub = humaneval_program(first["prompt"], "    return None\n", first["test"], first["entry_point"])
    outcome = await run_program(stub)
    assert outcome.status == "failed" and "AssertionError" in outcome.detail


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("llama-sidecar-sandbox-*")}


async def test_an_infinite_loop_times_out_and_its_group_is_killed() -> None:
    began = trio.current_time()
    outcome = await run_program("while True:\n    pass\n", Limits(timeout_s=1))
    assert outcome.status == "timeout" and "1 s" in outcome.detail
    assert trio.current_time() - began < 5


@pytest.mark.parametrize(
    ("name", "source", "error"),
    [
        ("fork loop", "import os\nwhile True:\n    os.fork()\n", "TypeError"),
        ("shell", "import os\nos.system('touch escaped')\n", "TypeError"),
        ("subprocess", "import subprocess\nsubprocess.Popen(['sleep', '60'])\n", "TypeError"),
        ("multiprocessing", "import multiprocessing\n", "ModuleNotFoundError"),
        ("10 GB", "block = bytearray(10 * 2**30)\n", "MemoryError"),
        ("huge file", "with open('big', 'wb') as f:\n    f.write(b'x' * (64 * 2**20))\n", "File too large"),
        # Leaving early with status 0 must not pass for "the tests passed".
        ("exit(0)", "exit(0)\nassert False\n", "exited (status 0) before its tests finished"),
        ("SystemExit", "raise SystemExit\n", "exited (status None) before its tests finished"),
        ("sys.exit", "import sys\nsys.exit(0)\n", "exited (status 0) before its tests finished"),
        ("os._exit", "import os\nos._exit(0)\n", "TypeError"),
    ],
)
async def test_hostile_programs_fail_without_harm(name: str, source: str, error: str) -> None:
    before = sandbox_dirs()
    outcome = await run_program(source, Limits(timeout_s=5, file_bytes=16 * 2**20))
    assert outcome.status == "failed", (name, outcome)
    assert error in outcome.detail, (name, outcome.detail)
    assert sandbox_dirs() <= before  # its temporary directory is gone


async def test_files_outside_the_temporary_directory_survive(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    for attack in (
        f"import os\nos.remove({str(victim)!r})\n",
        f"import os\nos.unlink({str(victim)!r})\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        f"import os\nos.rename({str(victim)!r}, 'stolen')\n",
    ):
        outcome = await run_program(attack)
        assert outcome.status == "failed" and "TypeError" in outcome.detail, (attack, outcome)
    assert victim.read_text() == "keep me"


async def test_a_descendant_that_escapes_the_guard_dies_with_the_program(tmp_path: Path) -> None:
    # The guard disables os.fork, but the C function is still reachable through the posix module:
    # the kill of the whole group at the end is what stops such a descendant.
    pid_file = tmp_path / "pid"
    source = (
        "import posix, time\n"
        "if posix.fork() == 0:\n"
        f"    open({str(pid_file)!r}, 'w').write(str(posix.getpid()))\n"
        "    time.sleep(60)\n"
        "else:\n"
        "    time.sleep(0.5)\n"
    )
    outcome = await run_program(source, Limits(timeout_s=5))
    assert outcome.status == "passed"
    descendant = int(pid_file.read_text())
    await wait_until(lambda: not pid_alive(descendant), timeout_s=5)
