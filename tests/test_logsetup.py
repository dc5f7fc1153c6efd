"""The daemon's log lines: with syslog priorities for the journal, timed on a terminal, or in a file."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from orchestrator import logsetup
from orchestrator.routing import LlamaServerBinary
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (logging.DEBUG, 7)],
)
def test_levels_map_to_syslog_priorities(level: int, priority: int) -> None:
    assert logsetup.syslog_priority(level) == priority


def test_every_line_of_a_journal_record_carries_its_priority() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "first\nsecond", None, None)
    assert logsetup.JournalFormatter("%(message)s").format(record) == "<3>first\n<3>second"


def test_the_journal_is_recognised_by_the_stream_systemd_gave_us(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        status = os.fstat(stream.fileno())
        assert logsetup.writes_to_journal(stream, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
        assert not logsetup.writes_to_journal(
            stream, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"}
        )
        assert not logsetup.writes_to_journal(stream, {})


async def serve_once(
    tmp_path: Path,
    binary: LlamaServerBinary,
    model: str,
    stderr: Path,
    *arguments: str,
    journal: bool = False,
) -> None:
    """Run `orchestrator serve`, make one request that fails to start a child, then SIGTERM it."""
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\nport = {port}\n[llama_server]\nbin = "{binary.path}"\n[models.m]\npath = "{model}"\n'
    )
    with stderr.open("w") as sink:
        environment = dict(os.environ)
        if journal:
            status = os.fstat(sink.fileno())
            environment["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        command = [sys.executable, "-m", "orchestrator", "serve", "--config", str(config), *arguments]
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            process: trio.Process = await nursery.start(
                partial(trio.run_process, command, stderr=sink, env=environment, check=False)
            )
            with trio.fail_after(30):
                while True:
                    try:
                        await client.get(f"http://127.0.0.1:{port}/health")
                        break
                    except httpx.ConnectError:
                        await trio.sleep(0.05)  # not listening yet
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            assert (
                await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            ).status_code == 502
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await process.wait()


async def test_under_systemd_lines_carry_priorities_and_no_timestamp(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    stderr = tmp_path / "journal"
    await serve_once(tmp_path, fake_binary, fake_model(exit_during_load=3), stderr, journal=True)
    lines = stderr.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>serving on ") for line in lines)
    assert any(line.startswith("<3>") and "could not start" in line for line in lines)  # -p err finds it
    assert not any(re.search(r"\d\d:\d\d:\d\d", line[:40]) for line in lines)  # the journal has the time


async def test_log_file_takes_the_lines_with_their_time(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    stderr, log_file = tmp_path / "stderr", tmp_path / "daemon.log"
    await serve_once(
        tmp_path, fake_binary, fake_model(exit_during_load=3), stderr, "--log-file", str(log_file)
    )
    logged = log_file.read_text().splitlines()
    assert any("serving on" in line for line in logged)
    assert all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in logged if not line.startswith(" ")
    )
    assert "serving on" not in stderr.read_text()
