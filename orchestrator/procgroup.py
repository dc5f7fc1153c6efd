"""Process groups and signals: the one place where POSIX and Windows differ.

Each child runs in its own session (POSIX) or process group (Windows) so that
stopping it reaches everything it started, and a signal meant for the daemon's
terminal is not delivered to the children as well.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

import psutil
import trio

from orchestrator.sdnotify import PROTOCOL_VARIABLES

IS_WINDOWS = sys.platform == "win32"

_SCRUBBED_PREFIXES = ("LLAMA_ARG_",)
_SCRUBBED_NAMES = ("LLAMA_SERVER_ROUTER_PORT", "LLAMA_API_KEY", *PROTOCOL_VARIABLES)


def child_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours, plus ``extra``, minus what would override its argv.

    llama.cpp reads LLAMA_ARG_* before argv (they could set the port or model),
    a child that sees LLAMA_SERVER_ROUTER_PORT thinks it is a router child, and systemd's
    notify variables are the daemon's alone.
    """
    env = {**base, **extra}
    return {
        name: value
        for name, value in env.items()
        if not name.startswith(_SCRUBBED_PREFIXES) and name not in _SCRUBBED_NAMES
    }


def spawn_options() -> dict[str, Any]:
    """Keyword arguments for ``trio.run_process`` that isolate the child's process group."""
    if sys.platform == "win32":
        # No console of its own, and none inherited: under a service or a scheduled task there is
        # none, and a child tied to one dies with it (DETACHED_PROCESS, not CREATE_NO_WINDOW).
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS}
    return {"start_new_session": True}


def request_stop(process: trio.Process) -> None:
    """Ask the child to exit (SIGTERM on POSIX; llama-server shuts down gracefully on it)."""
    if process.returncode is None:
        process.terminate()


def kill_group(pid: int) -> None:
    """SIGKILL everything in the child's process group, the child's descendants included.

    Called once the direct child has exited too: a grandchild that ignored
    SIGTERM would otherwise survive and keep the stderr pipe open.
    """
    if sys.platform == "win32":
        _kill_descendants(pid)
        return
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pid, signal.SIGKILL)


def _kill_descendants(pid: int) -> None:
    try:
        family = process_family(pid)
    except psutil.NoSuchProcess:
        return  # best effort on Windows: once the parent is gone its children are unknown
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue  # exited meanwhile


def process_family(pid: int) -> list[psutil.Process]:
    """The process and its descendants; psutil.NoSuchProcess if it is gone.

    On Linux the tree is walked through each thread's /proc children list: a
    few small reads. psutil's ``children()`` reads the stat file of every
    process on the machine instead (2.6 ms with 65 of them), and the stats
    sampler asks for each child's family every two seconds.
    """
    root = psutil.Process(pid)
    descendants = _descendants_from_proc(pid)
    if descendants is None:
        return [root, *root.children(recursive=True)]
    family = [root]
    for descendant in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited since its parent listed it
            family.append(psutil.Process(descendant))
    return family


@functools.cache
def _proc_lists_children() -> bool:
    """Whether /proc has each thread's children list (Linux built with CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


def _descendants_from_proc(pid: int) -> list[int] | None:
    """Every descendant's pid, parents before their children; None where /proc cannot say."""
    if not _proc_lists_children():
        return None
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except (FileNotFoundError, ProcessLookupError):  # exited since its parent listed it
            continue
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children") as listing:
                    children = [int(child) for child in listing.read().split()]
            except (FileNotFoundError, ProcessLookupError):  # that thread has ended meanwhile
                continue
            found += children
            pending += children
    return found


def describe_exit(returncode: int) -> str:
    """'exit code 1' or 'killed by SIGILL', for people reading logs."""
    if returncode < 0 and not IS_WINDOWS:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def is_illegal_instruction(returncode: int) -> bool:
    return not IS_WINDOWS and returncode == -signal.SIGILL
