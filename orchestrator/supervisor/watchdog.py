"""No orphans: a tiny process that kills the daemon's children if the daemon dies.

The daemon starts one watchdog (``python -m orchestrator.supervisor.watchdog_process``,
which imports nothing but the standard library while it waits) in its own
session and keeps the write end of its stdin. It writes ``+PID CREATED`` when a
child starts and ``-PID`` when it is reaped. If the daemon dies, even by
SIGKILL, the kernel closes the pipe: the watchdog reads end-of-file and kills
the process group of every child still registered, checking each pid's
creation time first so that a reused pid is never touched.

The daemon also records its children in a state file of its own, named after
its pid, with its own pid and creation time as the owner. At start-up a daemon
sweeps every state file whose owner is gone (a crash the watchdog could not
cover, such as a reboot of the watchdog's session) and leaves the files of
live daemons alone, whatever port they serve.

(Linux's parent-death signal does not fit: it follows the thread that forked,
and trio forks from worker threads that come and go.) On Windows each child
is also put in a kill-on-close job object (see winjob), which covers the
watchdog itself being killed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import psutil
import trio

from orchestrator import procgroup
from orchestrator.dirs import state_dir
from orchestrator.supervisor import winjob

log = logging.getLogger("orchestrator.supervisor.watchdog")


def kill_registered(children: dict[int, float]) -> list[int]:
    """SIGKILL the group of each registered child that is still the same process; the pids killed."""
    killed = []
    for pid, created in children.items():
        actual = _identity(pid)
        if actual is None or abs(actual - created) > 0.01:
            continue  # already gone, or the pid was reused by an unrelated process
        procgroup.kill_group(pid)
        killed.append(pid)
    return killed


_state_files = itertools.count()


def own_state_file() -> Path:
    """A state file for one daemon of this process (tests run several in one process)."""
    return state_dir() / f"children-{os.getpid()}-{next(_state_files)}.json"


def _identity(pid: int) -> float | None:
    """The process's creation time, or None if there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


def _owner_alive(owner: dict[str, float]) -> bool:
    created = _identity(int(owner["pid"]))
    return created is not None and abs(created - float(owner["created"])) <= 0.01


def sweep_leftovers(directory: Path) -> list[int]:
    """Kill the children recorded by daemons that are gone, and forget them; the pids killed."""
    killed = []
    for state_file in sorted(directory.glob("children-*.json")):
        try:
            recorded = json.loads(state_file.read_text("utf-8"))
            if _owner_alive(recorded["owner"]):
                continue  # a live daemon's children are its own business
            children = {int(pid): float(created) for pid, created in recorded["children"].items()}
        except FileNotFoundError:
            continue  # its daemon exited cleanly meanwhile
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("ignoring unreadable state file %s: %s", state_file, error)
            continue
        killed += kill_registered(children)
        with contextlib.suppress(FileNotFoundError):  # another daemon swept it at the same time
            state_file.unlink()
    if killed:
        log.warning("stopped %d llama-server(s) left by an earlier instance: pids %s", len(killed), killed)
    return killed


def _write_state(state_file: Path, children: dict[int, float]) -> None:
    owner = {"pid": os.getpid(), "created": _identity(os.getpid())}
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        partial_file = state_file.with_suffix(".tmp")
        document = {"owner": owner, "children": {str(pid): created for pid, created in children.items()}}
        partial_file.write_text(json.dumps(document), "utf-8")
        partial_file.replace(state_file)
    except OSError as error:
        log.warning("cannot record children in %s: %s", state_file, error)  # the watchdog still guards them


# The watchdog runs without site (-S: 2.5 MiB less for as long as the daemon lives), told where
# to import from: the folder that holds this package, and the daemon's own path (for psutil).
_WATCHDOG_BOOT = (
    "import sys; sys.path[:0] = sys.argv[1:]; "
    "from orchestrator.supervisor.watchdog_process import main; sys.exit(main())"
)


def _import_paths() -> list[str]:
    package_home = str(Path(__file__).resolve().parents[2])
    return [package_home, *(entry for entry in sys.path if entry and entry != package_home)]


class Watchdog:
    """The daemon's side: starts the watchdog process, tells it about children, records them."""

    def __init__(self, state_file: Path | None = None) -> None:
        """``state_file``: where to record the children (see own_state_file); None: nowhere."""
        self._send, self._receive = trio.open_memory_channel[str](1000)
        self._state_file = state_file
        self._children: dict[int, float] = {}

    def register(self, pid: int) -> None:
        try:
            winjob.contain(pid)
        except OSError as error:  # exited already, or the job is refused: the watchdog still guards it
            log.warning("cannot put pid %d in the daemon's job object: %s", pid, error)
        created = _identity(pid)
        if created is not None:  # else it exited already: nothing to guard
            self._send.send_nowait(f"+{pid} {created}\n")

    def unregister(self, pid: int) -> None:
        self._send.send_nowait(f"-{pid}\n")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._state_file is not None:
            await trio.to_thread.run_sync(sweep_leftovers, self._state_file.parent)
            await trio.to_thread.run_sync(_write_state, self._state_file, {})
        try:
            await self._guard(task_status)
        finally:
            if self._state_file is not None:  # a clean exit: nothing left to sweep
                with contextlib.suppress(FileNotFoundError):
                    self._state_file.unlink()

    async def _guard(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            command = [sys.executable, "-S", "-c", _WATCHDOG_BOOT, *_import_paths()]
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
