"""`orchestrator eval` end to end on SmolLM2 through the proxy: suites, resume, a killed run, A/B."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from orchestrator.supervisor.events import Published, RequestStarted
from tests.conftest import make_config, running_daemon, wait_until
from tests.evals.test_report import assert_valid_html

pytestmark = pytest.mark.real


class RequestCounter:
    """Counts the requests the daemon serves, from its own events feed."""

    def __init__(self) -> None:
        self.started = 0

    async def watch(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert daemon.pool is not None
        with daemon.pool.events.subscribe() as events:
            task_status.started()
            async for item in events:
                if isinstance(item, Published) and isinstance(item.event, RequestStarted):
                    self.started += 1


@asynccontextmanager
async def counted_daemon(
    tmp_path: Path, binary: LlamaServerBinary, config: Any
) -> AsyncIterator[tuple[str, RequestCounter]]:
    counter = RequestCounter()
    async with running_daemon(config, binary) as (url, daemon), trio.open_nursery() as nursery:
        await nursery.start(counter.watch, daemon)
        yield url, counter
        nursery.cancel_scope.cancel()


def eval_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "eval", *args]


async def run(*args: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        eval_command(*args), capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def rows(results: Path) -> list[tuple[str, str, float]]:
    with sqlite3.connect(results / "evals.sqlite3") as db:
        return list(db.execute("SELECT run_id, question_id, created FROM results ORDER BY created"))


def answered_at_least(results: Path, count: int) -> bool:
    """Whether the run has stored ``count`` answers (its database may not have its table yet)."""
    try:
        return (results / "evals.sqlite3").exists() and len(rows(results)) >= count
    except sqlite3.OperationalError:  # "no such table": created, not yet set up
        return False


def run_args(suite: str, *, limit: int, max_tokens: int, url: str, results: Path) -> tuple[str, ...]:
    """`eval run` of SmolLM2 on the daemon at ``url``."""
    return ("run", "--suite", suite, "--model", "smollm2", "--limit", str(limit), "--max-tokens",
            str(max_tokens), "--url", f"{url}/v1", "--results", str(results))  # fmt: skip


def smollm2(tmp_path: Path, demo_model: Path, **extra: Any) -> Any:
    return make_config(tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "4096"]}}, **extra)


async def test_each_suite_answers_its_first_3_questions_and_the_same_command_then_asks_nothing(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    results = tmp_path / "results"
    async with counted_daemon(tmp_path, real_binary, smollm2(tmp_path, demo_model)) as (url, counter):
        command = run_args("all", limit=3, max_tokens=128, url=url, results=results)
        code, out, err = await run(*command)
        assert code == 0, err[-2000:]
        assert counter.started == 9
        assert f"results in {results}" in err
        for suite in ("mmlu", "gsm8k", "humaneval"):
            assert f"| {suite}-smollm2-" in out  # the report: a row per suite with its interval
        assert out.count("%, ") >= 3
        first = rows(results)
        assert len(first) == 9 and len({(run_id, q) for run_id, q, _ in first}) == 9

        code, _out, err = await run(*command)
        assert code == 0, err[-2000:]
        assert counter.started == 9  # resumed: not one new request
        assert err.count("asked 0, 3 already answered") == 3
        assert rows(results) == first

        code, out, err = await run("report", "--results", str(results), "--format", "html",
                                   first[0][0][:12])  # fmt: skip
        assert code == 0, err
        assert_valid_html(out)


async def test_a_run_killed_in_the_middle_continues_where_it_stopped(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    results = tmp_path / "results"
    async with counted_daemon(tmp_path, real_binary, smollm2(tmp_path, demo_model)) as (url, counter):
        command = run_args("gsm8k", limit=6, max_tokens=96, url=url, results=results)
        process = await trio.lowlevel.open_process(eval_command(*command), stderr=subprocess.DEVNULL)
        try:
            await wait_until(partial(answered_at_least, results, 2), 120)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        before = rows(results)
        assert 2 <= len(before) < 6
        asked_before = counter.started
        code, _out, err = await run(*command)
        assert code == 0, err[-2000:]
        after = rows(results)
        assert len(after) == 6 and after[: len(before)] == before  # kept, not redone
        assert counter.started - asked_before == 6 - len(before)  # only what was missing


async def test_ab_compares_two_agents_on_one_gguf_side_by_side(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    results = tmp_path / "results"
    agents = {"cold": {"model": "smollm2", "flags": ["--temp", "0"]},
              "warm": {"model": "smollm2", "flags": ["--temp", "0.7"]}}  # fmt: skip
    config = smollm2(tmp_path, demo_model, agents=agents)
    async with counted_daemon(tmp_path, real_binary, config) as (url, counter):
        code, out, err = await run("ab", "--models", "cold,warm", "--max-tokens", "64", "--concurrency", "4",
                                   "--url", f"{url}/v1", "--results", str(results))  # fmt: skip
    assert code == 0, err[-2000:]
    assert counter.started == 28
    assert "| model | checks passed |" in out and "| cold |" in out and "| warm |" in out
    assert "| long-context-recall | long-context recall |" in out
    page = (results / "ab-report.html").read_text()
    assert_valid_html(page)
    assert page.count("<pre>") == 14 * 3  # each prompt, and each agent's output
    report = (results / "ab-report.md").read_text()
    assert report.startswith(out.rstrip("\n") + "\n\n## Outputs")  # the terminal shows the tables only
    assert report.count("\n### ") == 14 and report.count("\n**cold**: ") == report.count("\n**warm**: ") == 14
