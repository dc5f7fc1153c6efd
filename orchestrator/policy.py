"""Pool policy: a sidecar's states, which children are idle, idle TTLs, copies, crash loops, health verdicts.

Pure functions over small views of the pool, so the rules are tested without
processes, sockets or clocks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


class State(enum.Enum):
    """The life of one sidecar."""

    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    EXITED = "exited"


# Which state may follow which: a sidecar's life only moves forward.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.STARTING: frozenset({State.READY, State.STOPPING, State.EXITED}),
    State.READY: frozenset({State.UNHEALTHY, State.STOPPING, State.EXITED}),
    State.UNHEALTHY: frozenset({State.EXITED}),  # it kills itself at once
    State.STOPPING: frozenset({State.EXITED}),
    State.EXITED: frozenset(),
}


def can_move(current: State, new: State) -> bool:
    return new in TRANSITIONS[current]


class StopReason(enum.Enum):
    """Why a child was taken out of service (what the events feed reports)."""

    LRU = "lru"  # the pool was full and it was the least recently used idle child
    TTL = "ttl"  # idle longer than its TTL
    UNHEALTHY = "unhealthy"  # /health failed too often
    MANUAL = "manual"  # someone asked (API, CLI, dashboard)
    RESTART = "restart"  # someone asked for a fresh one
    SHUTDOWN = "shutdown"  # the daemon is stopping
    RELOAD = "reload"  # a config reload removed or changed what it serves


@dataclass(frozen=True)
class Occupant:
    """What the policy needs to know about one live child."""

    key: str
    state: State
    in_flight: int
    last_used: float  # trio clock
    waiting: int = 0  # requests queued for it to become ready
    idle_ttl_s: float = 0.0  # stop it after this long idle; 0 = never
    pinned: bool = False  # never stopped for room or idleness


def evictable(occupant: Occupant) -> bool:
    """Only a ready child that no request uses or waits for may be stopped to make room.

    Waiters count: a child that just became ready belongs to the requests that
    waited for it, not to whichever other request wakes up first.
    """
    return occupant.state is State.READY and occupant.in_flight == 0 and occupant.waiting == 0


def _expires(occupant: Occupant) -> bool:
    return occupant.idle_ttl_s > 0 and evictable(occupant) and not occupant.pinned


def expired(occupants: Iterable[Occupant], now: float) -> list[str]:
    """Children idle for at least their TTL (a TTL of 0 means never)."""
    return [o.key for o in occupants if _expires(o) and now - o.last_used >= o.idle_ttl_s]


def next_expiry(occupants: Iterable[Occupant]) -> float | None:
    """When the next idle child will reach its TTL, if any."""
    return min((o.last_used + o.idle_ttl_s for o in occupants if _expires(o)), default=None)


def copy_wanted(
    copies: Sequence[tuple[Occupant, int]], replicas_max: int, waited_s: float, after_s: float
) -> bool:
    """Whether a busy child deserves one more copy (``copies``: each copy and its request limit).

    Only when every copy is ready and serving all it can, a request has waited ``after_s``
    for a slot, and there are fewer than ``replicas_max`` copies: a copy still starting
    will take the queue soon, and a free slot anywhere serves it sooner than a new child.
    """
    return (
        0 < len(copies) < replicas_max
        and waited_s >= after_s
        and all(o.state is State.READY and o.in_flight >= limit for o, limit in copies)
    )


def shortest_ttl(*ttls: float) -> float:
    """The shortest of idle TTLs, where 0 means never."""
    return min((ttl for ttl in ttls if ttl > 0), default=0.0)


@dataclass(frozen=True)
class CrashLoopRule:
    """``failures`` within ``window_s`` start a backoff of ``base_s``, doubling with each further
    failure up to ``max_backoff_s`` (``pool.crash_loop``)."""

    failures: int = 3
    window_s: float = 60.0
    max_backoff_s: float = 60.0
    base_s: float = 1.0


@dataclass(frozen=True)
class Failure:
    """One failure of a key's child: when (trio clock), why, and its last stderr lines."""

    at: float
    reason: str
    stderr_tail: tuple[str, ...] = ()
    exit_code: int | None = None


@dataclass(frozen=True)
class Backoff:
    """A key that may not be respawned before ``until``."""

    until: float
    failures: int  # within the window
    last: Failure


class CrashHistory:
    """Each key's recent failures, and the backoffs they call for.

    Bounded: only failures within the window of a key's newest one are kept,
    and a key is forgotten once it has been quiet for longer than its window
    and any backoff has ended, so keys brought by per-request flags do not
    accumulate.
    """

    def __init__(self, rule: CrashLoopRule = CrashLoopRule()) -> None:
        self.rule = rule
        self._failures: dict[str, list[Failure]] = {}

    def record(self, key: str, failure: Failure) -> None:
        window_start = failure.at - self.rule.window_s
        recent = [f for f in self._failures.get(key, []) if f.at >= window_start]
        self._failures[key] = [*recent, failure]
        self.forget_quiet(failure.at)

    def backoff(self, key: str, now: float) -> Backoff | None:
        """The backoff ``key`` is in at ``now``, or None: it may be spawned."""
        history = self._failures.get(key, [])
        if len(history) < self.rule.failures:
            return None
        delay = min(
            self.rule.max_backoff_s, self.rule.base_s * float(2 ** (len(history) - self.rule.failures))
        )
        until = history[-1].at + delay
        return Backoff(until, len(history), history[-1]) if now < until else None

    def backoffs(self, now: float) -> dict[str, Backoff]:
        return {key: backoff for key in self._failures if (backoff := self.backoff(key, now)) is not None}

    def forget_quiet(self, now: float) -> None:
        """Drop keys whose newest failure left the window and that are not backing off."""
        quiet = [
            key
            for key, history in self._failures.items()
            if now - history[-1].at > self.rule.window_s and self.backoff(key, now) is None
        ]
        for key in quiet:
            del self._failures[key]

    def last(self, key: str) -> Failure | None:
        """The newest failure of ``key`` still remembered (within its window, or backing off)."""
        history = self._failures.get(key)
        return history[-1] if history else None

    def __contains__(self, key: str) -> bool:
        return key in self._failures

    def __len__(self) -> int:
        return len(self._failures)


HEALTH_FAILURE_LIMIT = 3


def unhealthy(consecutive_failures: int, limit: int = HEALTH_FAILURE_LIMIT) -> bool:
    """A child is unhealthy after ``limit`` failed health checks in a row."""
    return consecutive_failures >= limit


def port_candidates(port_range: tuple[int, int], in_use: Sequence[int], start: int) -> list[int]:
    """Ports of the range not held by a live child, beginning at ``start`` and wrapping.

    Starting where the previous allocation left off means a retry after a
    bind failure tries a different port instead of the same taken one.
    """
    first, last = port_range
    size = last - first + 1
    offset = (start - first) % size
    ordered = [first + (offset + i) % size for i in range(size)]
    taken = set(in_use)
    return [port for port in ordered if port not in taken]
