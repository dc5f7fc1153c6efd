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
import logging
import signal
import subprocess
import sys
from functools import partial

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


class Watchdog:
    """The daemon's side: starts the watchdog process and tells it about children."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str](1000)

    def register(self, pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited already: nothing to guard
            self._send.send_nowait(f"+{pid} {psutil.Process(pid).create_time()}\n")

    def unregister(self, pid: int) -> None:
        self._send.send_nowait(f"-{pid}\n")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
