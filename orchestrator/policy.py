"""Pool policy: which child to evict, which have outlived their idle TTL, health verdicts.

Pure functions over small views of the pool, so the rules are tested without
processes, sockets or clocks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class State(enum.Enum):
    """The life of one sidecar."""

    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    EXITED = "exited"


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


def evictable(occupant: Occupant) -> bool:
    """Only a ready child that no request uses or waits for may be stopped to make room.

    Waiters count: a child that just became ready belongs to the requests that
    waited for it, not to whichever other request wakes up first.
    """
    return occupant.state is State.READY and occupant.in_flight == 0 and occupant.waiting == 0


def choose_victim(occupants: Iterable[Occupant]) -> str | None:
    """The least recently used evictable child, or None if every child is busy or loading."""
    candidates = [o for o in occupants if evictable(o)]
    if not candidates:
        return None
    return min(candidates, key=lambda o: (o.last_used, o.key)).key


def _expires(occupant: Occupant) -> bool:
    return occupant.idle_ttl_s > 0 and evictable(occupant)


def expired(occupants: Iterable[Occupant], now: float) -> list[str]:
    """Children idle for at least their TTL (a TTL of 0 means never)."""
    return [o.key for o in occupants if _expires(o) and now - o.last_used >= o.idle_ttl_s]


def next_expiry(occupants: Iterable[Occupant]) -> float | None:
    """When the next idle child will reach its TTL, if any."""
    return min((o.last_used + o.idle_ttl_s for o in occupants if _expires(o)), default=None)


@dataclass(frozen=True)
class CrashLoopRule:
    """``threshold`` failures within ``window_s`` start an exponential backoff, capped."""

    window_s: float = 60.0
    threshold: int = 3
    base_s: float = 1.0
    cap_s: float = 60.0


def backoff_until(failures: Sequence[float], rule: CrashLoopRule = CrashLoopRule()) -> float | None:
    """Until when a key may not be respawned, given its failure times (oldest first); None: go ahead.

    Only failures within ``window_s`` of the newest one count, so a model that
    failed long ago starts with a clean slate.
    """
    if not failures:
        return None
    recent = [t for t in failures if t >= failures[-1] - rule.window_s]
    if len(recent) < rule.threshold:
        return None
    delay = min(rule.cap_s, rule.base_s * float(2 ** (len(recent) - rule.threshold)))
    return failures[-1] + delay


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
