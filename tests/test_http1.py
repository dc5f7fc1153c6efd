"""The upstream's HTTP/1.1: request bytes, and responses read whole, split anywhere, or broken."""

from __future__ import annotations

import h11
import pytest

from orchestrator.errors import MalformedResponseError
from orchestrator.http1 import MAX_HEAD_BYTES, ResponseReader, encode_request


def h11_response(headers: list[tuple[str, str]], chunks: list[bytes], status: int = 200) -> bytes:
    """A response as h11's server side writes it (the reference encoding)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    server.next_event()
    server.next_event()
    out = server.send(h11.Response(status_code=status, headers=headers)) or b""
    for chunk in chunks:
        out += server.send(h11.Data(data=chunk)) or b""
    return out + (server.send(h11.EndOfMessage()) or b"")


def read_all(reader: ResponseReader, pieces: list[bytes]) -> tuple[int, bytes]:
    """Feeds ``pieces`` one by one, reading what each makes available, as the upstream does."""
    status, body = 0, b""
    for piece in pieces:
        reader.feed(piece)
        head = reader.head()
        if head is not None:
            status = head.status
            body += reader.body()
    return status, body


STREAMED = h11_response(
    [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")],
    [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"],
)
SIZED = h11_response([("Content-Type", "application/json"), ("Content-Length", "11")], [b'{"ok":true}'])


@pytest.mark.parametrize("raw", [STREAMED, SIZED], ids=["chunked", "content-length"])
def test_a_response_split_at_any_byte_reads_the_same_and_leaves_the_connection_reusable(raw: bytes) -> None:
    expected = b"data: one\n\ndata: two\n\ndata: [DONE]\n\n" if raw is STREAMED else b'{"ok":true}'
    for cut in range(1, len(raw)):
        reader = ResponseReader()
        assert read_all(reader, [raw[:cut], raw[cut:]]) == (200, expected), cut
        assert reader.ended and reader.reusable
    reader = ResponseReader()
    assert read_all(reader, [raw[i : i + 1] for i in range(len(raw))]) == (200, expected)
    assert reader.reusable


def test_header_names_come_in_lower_case_with_values_trimmed() -> None:
    reader = ResponseReader()
    reader.feed(
        b"HTTP/1.1 200 OK\r\nContent-Type:  application/json \r\nX-Empty:\r\nContent-Length: 0\r\n\r\n"
    )
    head = reader.head()
    assert head is not None
    assert head.headers == (
        (b"content-type", b"application/json"),
        (b"x-empty", b""),
        (b"content-length", b"0"),
    )
    assert reader.ended and reader.body() == b""


def test_chunks_that_arrive_together_come_out_as_one_piece() -> None:
    reader = ResponseReader()
    reader.feed(STREAMED)
    assert reader.head() is not None
    assert reader.body() == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
    assert reader.ended


def test_informational_responses_are_skipped_and_a_no_content_reply_has_no_body() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    head = reader.head()
    assert head is not None and head.status == 204
    assert reader.ended and reader.reusable


def test_a_response_without_length_ends_when_the_connection_closes_and_is_not_reused() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
    assert reader.head() is not None
    assert reader.body() == b"part one, "
    assert not reader.ended
    reader.feed(b"part two")
    reader.feed(b"")
    assert reader.body() == b"part two"
    assert reader.ended and not reader.reusable


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok and more",
    ],
    ids=["connection-close", "http-1.0", "bytes-after-the-body"],
)
def test_a_connection_that_cannot_carry_the_next_request_is_not_reusable(head: bytes) -> None:
    reader = ResponseReader()
    reader.feed(head)
    assert reader.head() is not None
    assert reader.body() == b"ok"
    assert reader.ended and not reader.reusable


def test_trailers_after_the_last_chunk_are_read_and_dropped() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    assert reader.head() is not None
    assert reader.body() == b"abc"
    assert reader.ended and reader.reusable


def test_a_reusable_connection_reads_the_next_response_after_the_first() -> None:
    reader = ResponseReader()
    reader.feed(SIZED)
    assert reader.head() is not None and reader.body() == b'{"ok":true}'
    reader.next_response()
    assert reader.head() is None and not reader.ended
    reader.feed(STREAMED)
    assert reader.head() is not None and reader.body().startswith(b"data: one")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "other than chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "longer than its size"),
    ],
)
def test_a_malformed_response_is_refused_with_what_is_wrong(raw: bytes, reason: str) -> None:
    reader = ResponseReader()
    reader.feed(raw)
    with pytest.raises(MalformedResponseError, match=reason):
        reader.head()
        reader.body()


def test_equal_repeated_content_lengths_are_one_length() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    assert reader.head() is not None and reader.body() == b"ok" and reader.reusable


@pytest.mark.parametrize("cut", [len(STREAMED) - 10, len(SIZED) - 3], ids=["chunked", "content-length"])
def test_a_body_cut_short_by_the_close_is_an_error_after_what_did_arrive(cut: int) -> None:
    raw = STREAMED if cut > len(SIZED) else SIZED
    reader = ResponseReader()
    reader.feed(raw[:cut])
    reader.feed(b"")
    assert reader.head() is not None
    assert reader.body() != b""  # what came is handed on first
    with pytest.raises(MalformedResponseError, match="closed before the end"):
        reader.body()


def test_a_close_before_any_response_and_an_endless_head_are_errors() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    assert reader.head() is None
    reader.feed(b"")
    with pytest.raises(MalformedResponseError, match="closed before a response"):
        reader.head()
    endless = ResponseReader()
    endless.feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES)
    with pytest.raises(MalformedResponseError, match="longer than"):
        endless.head()


def test_a_request_is_content_length_framed_and_parses_as_sent() -> None:
    raw = encode_request("POST", "/v1/chat/completions", [(b"host", b"127.0.0.1:5800")], b'{"a":1}')
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target) == (b"POST", b"/v1/chat/completions")
    assert dict(request.headers) == {b"host": b"127.0.0.1:5800", b"content-length": b"7"}
    data = server.next_event()
    assert isinstance(data, h11.Data) and data.data == b'{"a":1}'
    assert isinstance(server.next_event(), h11.EndOfMessage)


@pytest.mark.parametrize("header", [(b"x", b"a\r\nInjected: yes"), (b"x\n", b"a")])
def test_a_request_header_that_would_break_the_framing_is_refused(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="control characters"):
        encode_request("GET", "/health", [header], b"")
