"""Fan-out to live subscribers, each with a bounded queue: a slow one never slows the others.

The publisher never waits. When a subscriber's queue is full the item is
counted as dropped for that subscriber alone; as soon as there is room again,
a ``Dropped(count)`` notice is queued first (or handed over as soon as the
subscriber has drained its queue), so it sees exactly where the gap is and how
big it was. Closing the fan-out ends every
subscription after what is queued (and a last pending ``Dropped``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

T = TypeVar("T")

DEFAULT_QUEUE = 1000


@dataclass(frozen=True)
class Dropped:
    """``count`` items were dropped here because this subscriber fell behind."""

    count: int


class Subscription(Generic[T]):
    """One subscriber's bounded queue; iterate it to receive items and Dropped notices."""

    def __init__(self, capacity: int) -> None:
        self._send, self._receive = trio.open_memory_channel[T | Dropped](capacity)
        self._pending_drops = 0

    def offer(self, item: T) -> None:
        if self._pending_drops and not self._try_send(Dropped(self._pending_drops)):
            self._pending_drops += 1
            return
        self._pending_drops = 0 if self._try_send(item) else self._pending_drops + 1

    def _try_send(self, item: T | Dropped) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            return False  # full: this subscriber is behind
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True  # closed or gone: nothing to count
        return True

    def close(self) -> None:
        self._send.close()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T | Dropped:
        if self._pending_drops and self._receive.statistics().current_buffer_used == 0:
            # Drained: report the gap now rather than when the next item comes (maybe never).
            count, self._pending_drops = self._pending_drops, 0
            return Dropped(count)
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._pending_drops:  # dropped after the last item that fitted
                count, self._pending_drops = self._pending_drops, 0
                return Dropped(count)
            raise StopAsyncIteration from None


class FanOut(Generic[T]):
    """Publishes items to every current subscriber."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscription[T]] = set()
        self.closed = False

    def publish(self, item: T) -> None:
        for subscriber in self._subscribers:
            subscriber.offer(item)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription[T]]:
        subscription: Subscription[T] = Subscription(self._queue_size)
        if self.closed:
            subscription.close()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription.close()

    def close(self) -> None:
        """End every subscription (after what is queued); later subscriptions end at once."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.close()

    def __len__(self) -> int:
        return len(self._subscribers)
