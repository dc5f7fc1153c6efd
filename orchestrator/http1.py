"""HTTP/1.1 on the wire to a child: a request's bytes, and a response read as its bytes arrive.

The upstream hop speaks only to llama-server, one request at a time per
connection and never HEAD, so it needs a small part of HTTP/1.1 (RFC 9112): a status line
and headers (informational 1xx responses skipped), then a body framed by
chunked transfer coding, by Content-Length, or by the connection's close.
A general parser (h11) spent about 150 µs of CPU on each small request's
exchange and tens on each streamed chunk; this one a fraction of that, since
the work per read is a few searches and slices in C.

It is strict where a mistake would reach the client or the next request:
header names must be tokens and values free of control characters, lengths
and chunk sizes well formed, a body not cut short; anything else is a
MalformedResponseError. A connection is reusable only after a response
framed by its length or chunks, read to its end, with nothing after it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from orchestrator.errors import MalformedResponseError

MAX_HEAD_BYTES = 64 * 1024  # status line and headers (and a chunked body's trailers)
_MAX_CHUNK_LINE_BYTES = 1024  # a size in hex, maybe with extensions
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
# Every header line at once: a token, a colon, a value of visible characters, spaces and tabs.
_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_UNSAFE_IN_REQUEST = re.compile(rb"[\x00-\x1f\x7f]")


def encode_request(method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole request, Content-Length framed; ValueError if a header would break its framing."""
    return encode_head(method, target, headers, len(body)) + body


def encode_head(
    method: str, target: str, headers: Sequence[tuple[bytes, bytes]], length: int | None
) -> bytes:
    """A request's head, for a body of ``length`` bytes (None: chunked, see ``encode_chunk``)."""
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    for name, value in headers:
        if _UNSAFE_IN_REQUEST.search(name) or _UNSAFE_IN_REQUEST.search(value):
            raise ValueError(f"header {name!r} holds control characters")
        lines.append(name + b": " + value)
    lines.append(b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    """One piece of a chunked body; the empty piece ends it."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # names in lower case, values without surrounding space


class _Framing(Enum):
    NONE = "none"  # no body (204, 304)
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # until the connection closes


class _Chunked(Enum):
    SIZE = "size"
    DATA = "data"
    DATA_END = "data end"
    TRAILERS = "trailers"


class ResponseReader:
    """One connection's responses, one at a time: ``feed`` what arrives, then read ``head`` and ``body``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._closed = False  # the child closed its end (fed b"")
        self._head: ResponseHead | None = None
        self._framing = _Framing.NONE
        self._keep_alive = False
        self._remaining = 0  # of the body (LENGTH) or of the current chunk (CHUNKED)
        self._chunked = _Chunked.SIZE
        self.ended = False  # the whole body has been read

    def feed(self, data: bytes) -> None:
        """Bytes received from the child; ``b""`` when it closed the connection."""
        if not data:
            self._closed = True
        else:
            self._buffer = self._buffer + data if self._buffer else data

    @property
    def reusable(self) -> bool:
        """The response was framed, read to its end, and nothing more came: the next request may follow."""
        return self.ended and self._keep_alive and not self._buffer and not self._closed

    def next_response(self) -> None:
        """Forget the response read (the connection is about to carry another request)."""
        assert self.reusable, "only a connection whose response was read to its end carries another"
        self._head, self.ended = None, False

    def head(self) -> ResponseHead | None:
        """The status and headers once they have arrived (None until then); 1xx responses are skipped."""
        while self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise MalformedResponseError(f"a response head longer than {MAX_HEAD_BYTES} bytes")
                if self._closed:
                    raise MalformedResponseError("the connection closed before a response")
                return None
            block, self._buffer = self._buffer[: end + 2], self._buffer[end + 4 :]
            status_end = block.index(b"\r\n")
            status_line = _STATUS_LINE.fullmatch(block, 0, status_end)
            if status_line is None:
                raise MalformedResponseError(f"not an HTTP/1.x status line: {block[:status_end][:80]!r}")
            if _HEADER_LINES.fullmatch(block, status_end + 2) is None:
                raise MalformedResponseError("a malformed header line (a name must be a token, then ':')")
            status = int(status_line[2])
            if status >= 200:
                self._start_body(status_line[1] == b"1", status, block[status_end + 2 :])
        return self._head

    def _start_body(self, http11: bool, status: int, lines: bytes) -> None:
        headers = []
        for line in lines.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(b" \t")))
        self._head = ResponseHead(status, tuple(headers))
        fields: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name in (b"transfer-encoding", b"content-length", b"connection"):
                fields.setdefault(name, []).append(value)
        connection = {
            token.strip().lower() for value in fields.get(b"connection", []) for token in value.split(b",")
        }
        self._keep_alive = http11 and b"close" not in connection
        encodings = fields.get(b"transfer-encoding")
        lengths = fields.get(b"content-length")
        if status in (204, 304):
            self._framing = _Framing.NONE
        elif encodings is not None:
            if lengths is not None:
                raise MalformedResponseError("both Transfer-Encoding and Content-Length")
            if [coding.lower() for coding in encodings] != [b"chunked"]:
                raise MalformedResponseError(
                    f"a transfer coding other than chunked: {b', '.join(encodings)!r}"
                )
            self._framing, self._chunked = _Framing.CHUNKED, _Chunked.SIZE
        elif lengths is not None:
            values = {length.strip() for value in lengths for length in value.split(b",")}
            if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
                raise MalformedResponseError(f"an invalid Content-Length: {b', '.join(lengths)!r}")
            self._framing, self._remaining = _Framing.LENGTH, int(next(iter(values)))
        else:
            self._framing, self._keep_alive = _Framing.CLOSE, False
        self.ended = self._framing is _Framing.NONE or (
            self._framing is _Framing.LENGTH and not self._remaining
        )

    def body(self) -> bytes:
        """The body bytes that have arrived since the last call (de-chunked); ``ended`` says if that was all.

        MalformedResponseError if the framing is broken, or the connection closed before the end.
        """
        assert self._head is not None, "the head comes first"
        if self.ended:
            return b""
        if self._framing is _Framing.CHUNKED:
            data = self._chunks()
        elif self._framing is _Framing.LENGTH:
            data, self._buffer = self._buffer[: self._remaining], self._buffer[self._remaining :]
            self._remaining -= len(data)
            self.ended = not self._remaining
        else:  # CLOSE
            data, self._buffer = self._buffer, b""
            self.ended = self._closed
        if self._closed and not self.ended and not data:
            raise MalformedResponseError("the connection closed before the end of the response")
        return data

    def _chunks(self) -> bytes:
        """What whole or partial chunks the buffer holds, stopping where it runs out."""
        parts: list[bytes] = []
        buffer, position = self._buffer, 0
        while True:
            if self._chunked is _Chunked.DATA:
                piece = buffer[position : position + self._remaining]
                if not piece:
                    break
                parts.append(piece)
                position += len(piece)
                self._remaining -= len(piece)
                if self._remaining:
                    break
                self._chunked = _Chunked.DATA_END
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                limit = MAX_HEAD_BYTES if self._chunked is _Chunked.TRAILERS else _MAX_CHUNK_LINE_BYTES
                if len(buffer) - position > limit:
                    raise MalformedResponseError("a chunk-size or trailer line too long")
                break
            if self._chunked is _Chunked.DATA_END:
                if line_end != position:
                    raise MalformedResponseError("a chunk longer than its size")
                self._chunked = _Chunked.SIZE
            elif self._chunked is _Chunked.SIZE:
                size = _CHUNK_SIZE.fullmatch(buffer, position, line_end)
                if size is None:
                    raise MalformedResponseError(f"an invalid chunk size: {buffer[position:line_end][:40]!r}")
                self._remaining = int(size[1], 16)
                self._chunked = _Chunked.DATA if self._remaining else _Chunked.TRAILERS
            elif line_end == position:  # the empty line after the trailers (which are dropped)
                position += 2
                self.ended = True
                break
            position = line_end + 2
        self._buffer = buffer[position:]
        return parts[0] if len(parts) == 1 else b"".join(parts)
