"""No orphans: a tiny process that kills the daemon's children if the daemon dies.

The daemon starts one watchdog (``python -m orchestrator.watchdog``) in its
own session and keeps the write end of its stdin. It writes ``+PID CREATED``
when a child starts and ``-PID`` when it is reaped. If the daemon dies, even
by SIGKILL, the kernel closes the pipe: the watchdog reads end-of-file and
kills the process group of every child still registered, checking each pid's
creation time first so that a reused pid is never touched.

(Linux's parent-death signal does not fit: it follows the thread that forked,
and trio forks from worker threads that come and go.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import psutil
import trio

from orchestrator import procgroup

log = logging.getLogger("orchestrator.watchdog")


def kill_registered(children: dict[int, float]) -> list[int]:
    """SIGKILL the group of each registered child that is still the same process; the pids killed."""
    killed = []
    for pid, created in children.items():
        try:
            if abs(psutil.Process(pid).create_time() - created) > 0.01:
                continue  # the pid was reused by an unrelated process
        except psutil.NoSuchProcess:
            continue  # already gone
        procgroup.kill_group(pid)
        killed.append(pid)
    return killed


def main() -> int:
    # Signals for the daemon's terminal are not for us: only end-of-file ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, float] = {}
    for line in sys.stdin:
        sign, _, rest = line.strip().partition(" ")
        if sign.startswith("+") and rest:
            children[int(sign[1:])] = float(rest)
        elif sign.startswith("-"):
            children.pop(int(sign[1:]), None)
    killed = kill_registered(children)
    if killed:
        print(f"llama-sidecar watchdog: the daemon is gone; killed {killed}", file=sys.stderr)
    return 0


STATE_DIR_ENV = "LLAMA_SIDECAR_STATE_DIR"


def state_file_for(port: int) -> Path:
    """Where a daemon on ``port`` records its children, for the next instance to sweep."""
    configured = os.environ.get(STATE_DIR_ENV)
    base = (
        Path(configured)
        if configured
        else Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "llama-sidecar"
    )
    return base / f"children-{port}.json"


def sweep_leftovers(state_file: Path) -> list[int]:
    """Kill the children an earlier instance recorded and left behind; the pids killed."""
    try:
        recorded = json.loads(state_file.read_text("utf-8"))
        children = {int(pid): float(created) for pid, created in recorded.items()}
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError) as error:
        log.warning("ignoring unreadable state file %s: %s", state_file, error)
        return []
    killed = kill_registered(children)
    if killed:
        log.warning("stopped %d llama-server(s) left by an earlier instance: pids %s", len(killed), killed)
    return killed


def _write_state(state_file: Path, children: dict[int, float]) -> None:
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        partial_file = state_file.with_suffix(".tmp")
        partial_file.write_text(json.dumps({str(pid): created for pid, created in children.items()}), "utf-8")
        partial_file.replace(state_file)
    except OSError as error:
        log.warning("cannot record children in %s: %s", state_file, error)  # the watchdog still guards them


class Watchdog:
    """The daemon's side: starts the watchdog process, tells it about children, records them."""

    def __init__(self, state_file: Path | None = None) -> None:
        self._send, self._receive = trio.open_memory_channel[str](1000)
        self._state_file = state_file
        self._children: dict[int, float] = {}

    def register(self, pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited already: nothing to guard
            self._send.send_nowait(f"+{pid} {psutil.Process(pid).create_time()}\n")

    def unregister(self, pid: int) -> None:
        self._send.send_nowait(f"-{pid}\n")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._state_file is not None:
            await trio.to_thread.run_sync(sweep_leftovers, self._state_file)
            await trio.to_thread.run_sync(_write_state, self._state_file, {})
        async with trio.open_nursery() as nursery:
            command = [sys.executable, "-m", "orchestrator.watchdog"]
            start = partial(
                trio.run_process, command, stdin=subprocess.PIPE, check=False, **procgroup.spawn_options()
            )
            process: trio.Process = await nursery.start(start)
            assert process.stdin is not None
            task_status.started()
            async with process.stdin:
                async for line in self._receive:
                    await process.stdin.send_all(line.encode())
                    self._remember(line)
                    if self._state_file is not None:
                        await trio.to_thread.run_sync(_write_state, self._state_file, dict(self._children))

    def _remember(self, line: str) -> None:
        sign, _, created = line.strip().partition(" ")
        if sign.startswith("+"):
            self._children[int(sign[1:])] = float(created)
        else:
            self._children.pop(int(sign[1:]), None)


if __name__ == "__main__":
    sys.exit(main())
