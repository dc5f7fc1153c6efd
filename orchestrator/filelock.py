"""An exclusive lock on a folder, held while a process uses it, released by the OS when it dies.

A second holder (another daemon, or another store in this process) is refused at
once rather than waited for. POSIX ``flock`` and Windows' ``msvcrt.locking`` both
lock per open file, so a stale lock file left by a killed daemon locks nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOCK_NAME = ".lock"


class FolderInUseError(OSError):
    """Someone else holds the folder's lock."""


class FolderLock:
    """Held from ``acquire`` to ``release`` (or the process's end)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise FolderInUseError naming the holder's pid when it can be read."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{self.path.parent} is in use by process {holder}") from error
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None


def _holder(fd: int) -> str:
    try:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    except OSError:  # Windows: the holder's locked byte cannot be read
        return "unknown"


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
