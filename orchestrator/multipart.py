"""One field of a multipart/form-data body, found as the body arrives: pure.

A transcription request names its model in a form field; the proxy must know
it before it can choose the child, but should not hold a large audio file
whole to find it. Clients put simple fields before files (httpx, and so the
``openai`` package, send ``data`` before ``files``), so the field is usually in
the first piece of the body, and what was read is forwarded with the rest.
"""

from __future__ import annotations

import re

MAX_VALUE_BYTES = 1024  # a model name; a longer field is not one
_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?;\s*name="([^"]*)"')
_BOUNDARY = re.compile(r'(?i);\s*boundary="?([^";]+)"?')


class MultipartError(ValueError):
    """The body is not multipart/form-data as its Content-Type says, or the field is malformed."""


def boundary_of(content_type: str) -> bytes:
    """The boundary a ``multipart/form-data`` Content-Type declares (MultipartError if it is not one)."""
    found = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/form-data") or found is None:
        raise MultipartError(
            f"expected a multipart/form-data body with a boundary, got Content-Type {content_type!r}"
        )
    return found.group(1).strip().encode("latin-1")


class FieldFinder:
    """Feed it the body piece by piece; ``value`` is set once the field ``name`` is whole.

    ``ended`` is set when the body's closing delimiter has been seen without it.
    """

    def __init__(self, boundary: bytes, name: str) -> None:
        self._delimiter = b"--" + boundary
        self._name = name.encode()
        self._data = bytearray()
        self._next = 0  # where the next part's delimiter is looked for
        self.value: str | None = None
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        if self.value is not None or self.ended:
            return
        self._data += chunk
        while self.value is None and not self.ended and self._step():
            pass

    def _step(self) -> bool:
        """Read one part if it is whole; False: wait for more."""
        start = self._data.find(self._delimiter, self._next)
        if start < 0:
            return False
        after = start + len(self._delimiter)
        if len(self._data) < after + 2:
            return False
        if self._data[after : after + 2] == b"--":
            self.ended = True
            return False
        head_end = self._data.find(b"\r\n\r\n", after)
        if head_end < 0:
            return False
        named = _NAME.search(self._data, after, head_end)
        body_start = head_end + 4
        end = self._data.find(b"\r\n" + self._delimiter, body_start)
        is_wanted = named is not None and named.group(1) == self._name
        if end < 0:
            if is_wanted and len(self._data) - body_start > MAX_VALUE_BYTES:
                raise MultipartError(
                    f"the form field {self._name.decode()!r} is over {MAX_VALUE_BYTES} bytes"
                )
            return False
        if is_wanted:
            raw = bytes(self._data[body_start:end])
            if len(raw) > MAX_VALUE_BYTES:
                raise MultipartError(
                    f"the form field {self._name.decode()!r} is over {MAX_VALUE_BYTES} bytes"
                )
            try:
                self.value = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise MultipartError(f"the form field {self._name.decode()!r} is not UTF-8") from error
            return False
        self._next = end + 2
        return True
