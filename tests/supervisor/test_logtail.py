"""Line splitting and the ring buffer."""

from __future__ import annotations

from orchestrator.supervisor.logtail import LineSplitter, LogFeed


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


def test_log_feed_keeps_the_last_lines() -> None:
    feed = LogFeed(3)
    for index in range(5):
        feed.append(str(index))
    assert feed.tail() == ["2", "3", "4"]
    assert feed.tail(2) == ["3", "4"]
    assert feed.tail(0) == []
    assert [line.text for line in feed.history()] == ["2", "3", "4"]
    assert len(feed) == 3


async def test_log_feed_subscribers_get_new_lines_then_the_end() -> None:
    feed = LogFeed(10)
    feed.append("before")
    with feed.live.subscribe() as subscription:
        feed.append("after")
        feed.finish({"code": 0, "uptime_s": 1.0})
        received = [item async for item in subscription]
    assert [getattr(item, "text", item) for item in received] == ["after"]
    assert feed.exit == {"code": 0, "uptime_s": 1.0}
