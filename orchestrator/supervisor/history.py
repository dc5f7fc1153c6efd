"""The last minutes of the events feed worth replaying: stats samples and finished requests.

A dashboard opened after an incident starts from these (they come in its first
snapshot), so its charts and Activity view are full at once. Memory is bounded
twice: by age (``window_s``) and by count (a stats sample every 2 s makes 300 in
10 minutes; requests are capped, newest kept). It observes the pool like the
metrics do, keeping the events themselves (nothing is converted on the hot path).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Any

from orchestrator.supervisor.events import PoolEvent, RequestFinished, RequestRefused, Stats
from orchestrator.supervisor.pool import Pool

WINDOW_S = 600.0
MAX_SAMPLES = 600  # twice what the stats sampler makes in the window: a margin, still a bound
MAX_REQUESTS = 1000

Replayed = Stats | RequestFinished | RequestRefused


class History:
    """Keeps what ``replay`` gives back, from the moment it is made."""

    def __init__(self, pool: Pool, window_s: float = WINDOW_S, max_requests: int = MAX_REQUESTS) -> None:
        self.window_s = window_s
        self._samples: deque[Stats] = deque(maxlen=MAX_SAMPLES)
        self._requests: deque[RequestFinished | RequestRefused] = deque(maxlen=max_requests)
        pool.observers.append(self.observe)

    def observe(self, event: PoolEvent) -> None:
        if isinstance(event, Stats):
            self._samples.append(event)
        elif isinstance(event, RequestRefused) or (isinstance(event, RequestFinished) and event.figures):
            self._requests.append(event)

    def replay(self, now: float | None = None) -> list[dict[str, Any]]:
        """The kept events of the last ``window_s`` seconds as the feed sent them, oldest first."""
        since = (time.time() if now is None else now) - self.window_s
        for kept in (self._samples, self._requests):
            while kept and kept[0].ts < since:
                kept.popleft()
        merged: list[Replayed] = list(heapq.merge(self._samples, self._requests, key=lambda event: event.ts))
        return [event.to_json() for event in merged]
