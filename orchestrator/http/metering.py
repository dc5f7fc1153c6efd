"""How one proxied request went: status, time to first byte, duration and the child's token counts.

The relay shows the meter each chunk as it passes; nothing is held back or
copied for the client. What the meter keeps is bounded: the last few KiB of a
stream (where llama-server puts its ``timings`` and ``usage``), or a JSON
answer up to a size (beyond which its counts are not read).
"""

from __future__ import annotations

import trio

from orchestrator import usage
from orchestrator.supervisor.events import RequestFigures

STREAM_TAIL_BYTES = 16 * 1024  # the final events of a stream, timings and usage included
STREAM_HEAD_BYTES = 4 * 1024  # its first events (Anthropic's message_start has the prompt's size)
JSON_KEPT_BYTES = 1 << 20  # a larger JSON answer (embeddings of a big batch) goes uncounted


class RequestMeter:
    """Watches one request on an OpenAI route (see the module docstring)."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.asked = ""  # set once the name is known to be one of ours (labels stay bounded)
        self.model: str | None = None  # the configured model it routes to, then
        self.status = 0
        self.code: str | None = None
        self._started = trio.current_time()
        self._first_byte_at: float | None = None
        self._streaming = False
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._keeping = True
        self._head = b""  # of a stream whose first pieces left _kept

    def answered(self, status: int, content_type: str) -> None:
        """The child's response head arrived."""
        self.status = status
        self._streaming = content_type.startswith("text/event-stream")

    def failed(self, status: int, code: str) -> None:
        """The request ended in an error of ours (before or during the answer)."""
        if self.status == 0:  # a stream that broke keeps the 200 its client got
            self.status = status
        self.code = code

    def seen(self, chunk: bytes) -> None:
        """A chunk of the answer's body on its way to the client."""
        if self._first_byte_at is None:
            self._first_byte_at = trio.current_time()
        if not self._keeping:
            return
        self._kept.append(chunk)
        self._kept_bytes += len(chunk)
        if self._streaming:
            while len(self._kept) > 1 and self._kept_bytes - len(self._kept[0]) >= STREAM_TAIL_BYTES:
                gone = self._kept.pop(0)
                self._kept_bytes -= len(gone)
                if len(self._head) < STREAM_HEAD_BYTES:
                    self._head += gone[: STREAM_HEAD_BYTES - len(self._head)]
        elif self._kept_bytes > JSON_KEPT_BYTES:
            self._kept, self._keeping = [], False  # too large to read for counts

    def figures(self) -> RequestFigures:
        now = trio.current_time()
        body = b"".join(self._kept)
        if self.code is not None or not body:
            counts = usage.NO_COUNTS
        elif self._streaming:
            # The head's last line may be cut: it is on a line of its own, where a bad event is skipped.
            counts = usage.counts_in_stream_tail(self._head + b"\n" + body if self._head else body)
        else:
            counts = usage.counts_in_json(body)
        return RequestFigures(
            asked=self.asked,
            route=self.route,
            status=self.status,
            duration_s=now - self._started,
            ttft_s=None if self._first_byte_at is None else self._first_byte_at - self._started,
            prompt_tokens=counts.prompt,
            generated_tokens=counts.generated,
            tokens_per_s=counts.generation_per_s,
            code=self.code,
        )
