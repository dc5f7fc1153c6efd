"""Fan-out with bounded per-subscriber queues and exact dropped notices."""

from __future__ import annotations

import trio

from orchestrator.supervisor.fanout import Dropped, FanOut


async def collect(subscription: object) -> list[object]:
    return [item async for item in subscription]  # type: ignore[attr-defined]


async def test_every_subscriber_gets_every_item_in_order() -> None:
    fanout: FanOut[int] = FanOut(queue_size=10)
    with fanout.subscribe() as first, fanout.subscribe() as second:
        for number in range(5):
            fanout.publish(number)
        fanout.close()
        assert await collect(first) == [0, 1, 2, 3, 4]
        assert await collect(second) == [0, 1, 2, 3, 4]


async def test_a_full_queue_drops_for_that_subscriber_only_and_marks_the_gap() -> None:
    fanout: FanOut[int] = FanOut(queue_size=3)
    with fanout.subscribe() as slow, fanout.subscribe() as fast:
        received_fast: list[object] = []
        for number in range(10):
            fanout.publish(number)
            async for item in fast:  # the fast one keeps up: it takes each item as it comes
                received_fast.append(item)
                break
        fanout.close()
        assert received_fast == list(range(10))
        assert await collect(slow) == [0, 1, 2, Dropped(7)]


async def test_the_dropped_notice_sits_exactly_at_the_gap() -> None:
    fanout: FanOut[int] = FanOut(queue_size=3)
    with fanout.subscribe() as subscription:
        for number in range(5):  # 0, 1, 2 fit; 3 and 4 are dropped
            fanout.publish(number)
        taken = [await subscription.__anext__(), await subscription.__anext__()]  # room for two again
        fanout.publish(5)  # queued after a Dropped(2) notice
        fanout.publish(6)  # no room left: dropped
        fanout.close()
        assert taken + await collect(subscription) == [0, 1, 2, Dropped(2), 5, Dropped(1)]


async def test_a_gap_is_reported_once_drained_even_if_nothing_follows() -> None:
    fanout: FanOut[int] = FanOut(queue_size=2)
    with fanout.subscribe() as subscription:
        for number in range(5):
            fanout.publish(number)
        with trio.fail_after(1):
            taken = [await subscription.__anext__() for _ in range(3)]
        assert taken == [0, 1, Dropped(3)]


async def test_unsubscribing_leaves_nothing_behind_and_late_subscribers_end_at_once() -> None:
    fanout: FanOut[int] = FanOut()
    with fanout.subscribe():
        assert len(fanout) == 1
    assert len(fanout) == 0
    fanout.close()
    with fanout.subscribe() as late, trio.fail_after(1):
        assert await collect(late) == []
