"""Child output: a capped line splitter, a ring buffer of recent lines, pipe pumps."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from orchestrator.supervisor.fanout import DEFAULT_QUEUE, FanOut

MAX_LINE_BYTES = 8192
_READ_SIZE = 65536
_TRUNCATED = " [line truncated]"


@dataclass(frozen=True)
class LogLine:
    ts: float  # wall-clock seconds
    text: str


class LineSplitter:
    """Turns chunks of bytes into text lines, capping each line at ``max_bytes``.

    A longer line is cut and marked once; the rest of it is discarded up to its
    newline, so a child printing without newlines cannot grow our memory.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes | bytearray) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            if not self._discarding:
                self._buffer += data[start:end]
                if len(self._buffer) > self._max:
                    lines.append(self._decode(self._buffer[: self._max]) + _TRUNCATED)
                    self._buffer.clear()
                    self._discarding = True
            if newline < 0:
                return lines
            if not self._discarding:
                lines.append(self._decode(self._buffer))
            self._buffer.clear()
            self._discarding = False
            start = newline + 1

    def flush(self) -> list[str]:
        """The unterminated last line, at end of stream."""
        rest = [] if self._discarding or not self._buffer else [self._decode(self._buffer)]
        self._buffer.clear()
        self._discarding = False
        return rest

    @staticmethod
    def _decode(raw: bytes | bytearray) -> str:
        return bytes(raw).decode("utf-8", errors="replace").rstrip("\r")


class LogFeed:
    """A child's output: the last ``capacity`` lines, and live subscribers to new ones.

    Subscribe and read ``history()`` without a checkpoint in between, and the
    subscriber sees every line exactly once. ``finish`` records how the child
    ended and ends every subscription.
    """

    def __init__(self, capacity: int, queue_size: int = DEFAULT_QUEUE) -> None:
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self.live: FanOut[LogLine] = FanOut(queue_size)
        self.exit: dict[str, Any] | None = None

    def append(self, text: str) -> LogLine:
        line = LogLine(time.time(), text)
        self._lines.append(line)
        self.live.publish(line)
        return line

    def history(self) -> list[LogLine]:
        return list(self._lines)

    def tail(self, count: int | None = None) -> list[str]:
        lines = [line.text for line in self._lines]
        return lines if count is None else lines[-count:] if count else []

    def finish(self, exit_info: dict[str, Any]) -> None:
        self.exit = exit_info
        self.live.close()

    def __len__(self) -> int:
        return len(self._lines)


async def pump_lines(
    stream: trio.abc.ReceiveStream,
    on_line: Callable[[str], None],
    pause: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Read ``stream`` to its end, calling ``on_line`` for each line.

    After a read that did not fill the buffer, ``pause()`` is awaited before the
    next: a child that writes its log line by line (llama-server writes several
    lines per request) then wakes the daemon once per batch rather than once per
    line, and the pipe holds what comes meanwhile. A read that fills the buffer
    is followed at once, so a flood is read as fast as it comes.
    """
    splitter = LineSplitter()
    while chunk := await stream.receive_some(_READ_SIZE):
        for line in splitter.feed(chunk):
            on_line(line)
        if len(chunk) < _READ_SIZE and pause is not None:
            await pause()
    for line in splitter.flush():
        on_line(line)


async def drain(stream: trio.abc.ReceiveStream) -> None:
    """Read and discard ``stream`` so the child never blocks on a full pipe."""
    while await stream.receive_some(_READ_SIZE):
        pass
