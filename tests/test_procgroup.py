"""A child's whole process tree, as the stats sampler and the memory planner read it."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from orchestrator import procgroup

# A child that starts a grandchild, which starts a great-grandchild, then all wait for stdin to close.
_TREE = """
import subprocess, sys
depth = int(sys.argv[1])
if depth:
    subprocess.Popen([sys.executable, "-c", sys.argv[2], str(depth - 1), sys.argv[2]])
print("up", flush=True)
sys.stdin.read()
"""


def _pids_when(pid: int, count: int) -> set[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        family = {process.pid for process in procgroup.process_family(pid)}
        if len(family) == count:
            return family
        time.sleep(0.05)  # polled with a deadline: the grandchildren start on their own time
    raise AssertionError(f"the family of {pid} never had {count} processes")


@pytest.mark.parametrize("from_proc", [True, False], ids=["proc-children-lists", "psutil-scan"])
def test_the_family_is_the_process_and_every_descendant(
    monkeypatch: pytest.MonkeyPatch, from_proc: bool
) -> None:
    if from_proc and not procgroup._proc_lists_children():
        pytest.skip("this kernel has no /proc/<pid>/task/<tid>/children")
    if not from_proc:
        monkeypatch.setattr(procgroup, "_proc_lists_children", lambda: False)
    child = subprocess.Popen(
        [sys.executable, "-c", _TREE, "2", _TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        family = _pids_when(child.pid, 3)
        assert child.pid in family
        expected = {child.pid, *(p.pid for p in psutil.Process(child.pid).children(recursive=True))}
        assert family == expected and procgroup.process_family(child.pid)[0].pid == child.pid
    finally:
        for process in procgroup.process_family(child.pid)[::-1]:
            process.kill()
        child.wait()


def test_the_family_of_a_process_that_is_gone_is_no_such_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(psutil.NoSuchProcess):
        procgroup.process_family(child.pid)
