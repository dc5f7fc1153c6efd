"""Line splitting and the ring buffer."""

from __future__ import annotations

from orchestrator.logtail import LineSplitter, RingBuffer


def test_lines_split_across_chunks_and_crlf() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\r\ntw") == ["one"]
    assert splitter.feed(b"o\nthree") == ["two"]
    assert splitter.flush() == ["three"]
    assert splitter.flush() == []


def test_overlong_line_is_cut_once_and_the_rest_dropped() -> None:
    splitter = LineSplitter(max_bytes=10)
    assert splitter.feed(b"x" * 25) == ["x" * 10 + " [line truncated]"]
    assert splitter.feed(b"y" * 25 + b"\nnext\n") == ["next"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert LineSplitter().feed(b"caf\xe9\n") == ["caf\ufffd"]


def test_ring_buffer_keeps_the_last_lines() -> None:
    ring = RingBuffer(3)
    for index in range(5):
        ring.append(str(index))
    assert ring.tail() == ["2", "3", "4"]
    assert ring.tail(2) == ["3", "4"]
    assert ring.tail(0) == []
    assert len(ring) == 3
