"""Where the daemon's log goes and how its lines look: a terminal, the systemd journal, or a file.

Under systemd (``$JOURNAL_STREAM`` names our stderr) each line starts with its
syslog priority (``<3>`` error ... ``<7>`` debug) and carries no timestamp of
its own (the journal adds one), so ``journalctl -u llama-sidecar -p err``
shows the errors. ``--log-file`` (a scheduled task has no console) writes to a
file rotated at 10 MiB. Elsewhere: stderr, with the time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

TIMED_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
ROTATE_BYTES = 10 * 1024 * 1024
ROTATE_KEEP = 3
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(level: int) -> int:
    return next((priority for floor, priority in _PRIORITIES if level >= floor), 7)


class JournalFormatter(logging.Formatter):
    """Every line of a record (tracebacks included) prefixed with the record's syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def writes_to_journal(stream: TextIO, environment: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journal stream systemd gave us (not merely inherited the variable)."""
    expected = environment.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False  # no real file behind it
    return expected == f"{status.st_dev}:{status.st_ino}"


def configure(
    *,
    verbose: bool,
    log_file: str | None = None,
    stream: TextIO | None = None,
    environment: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send the root logger's records to the one handler that suits where we run; returns it."""
    stream = stream or sys.stderr
    handler: logging.Handler
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=ROTATE_BYTES, backupCount=ROTATE_KEEP, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter(TIMED_FORMAT))
    elif writes_to_journal(stream, os.environ if environment is None else environment):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(TIMED_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
