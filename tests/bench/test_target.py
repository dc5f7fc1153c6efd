"""The daemon a benchmark or an eval starts for its run never outlives the tool, even when it is SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest
import trio

from tests.conftest import pid_alive, wait_until


@pytest.mark.real
async def test_a_sigkilled_tool_takes_its_daemon_and_the_daemons_children_along() -> None:
    tool = await trio.lowlevel.open_process(
        [sys.executable, "-m", "orchestrator", "bench", "cold", "--repeat", "50"], stderr=subprocess.DEVNULL
    )
    try:

        def family() -> list[psutil.Process]:
            return psutil.Process(tool.pid).children(recursive=True)

        def command_line(process: psutil.Process) -> str:
            try:
                return " ".join(process.cmdline())
            except psutil.NoSuchProcess:  # exited (or a zombie) since it was listed
                return ""

        def serving() -> bool:  # the daemon and a llama-server under it
            names = " ".join(command_line(p) for p in family())
            return "--until-stdin-closes" in names and "llama-server" in names

        await wait_until(serving, timeout_s=60)
        pids = [p.pid for p in family()]
        tool.send_signal(signal.SIGKILL)
        await tool.wait()
        await wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout_s=30)
    finally:
        if tool.returncode is None:
            tool.kill()
            await tool.wait()
