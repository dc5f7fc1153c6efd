"""Pool policy, without processes or clocks."""

from __future__ import annotations

from orchestrator import policy
from orchestrator.policy import Occupant, State


def occupant(
    key: str, last_used: float, state: State = State.READY, in_flight: int = 0, ttl: float = 0.0
) -> Occupant:
    return Occupant(key, state, in_flight, last_used, idle_ttl_s=ttl)


def test_victim_is_the_least_recently_used_idle_ready_child() -> None:
    assert policy.choose_victim([occupant("a", 5), occupant("b", 1), occupant("c", 3)]) == "b"
    busy_or_loading = [
        occupant("a", 1, in_flight=1),
        occupant("b", 0, state=State.STARTING),
        occupant("c", 0, state=State.STOPPING),
        occupant("d", 9),
    ]
    assert policy.choose_victim(busy_or_loading) == "d"
    assert (
        policy.choose_victim([occupant("a", 1, in_flight=2), occupant("b", 1, state=State.STARTING)]) is None
    )
    just_ready = Occupant("a", State.READY, in_flight=0, last_used=0, waiting=1)
    assert policy.choose_victim([just_ready, occupant("b", 5)]) == "b"  # its waiters get it first


def test_idle_ttl_expiry_per_child() -> None:
    pool = [occupant("a", 0, ttl=10), occupant("b", 8, ttl=10), occupant("busy", 0, in_flight=1, ttl=10)]
    assert policy.expired(pool, now=10) == ["a"]
    assert policy.next_expiry(pool) == 10
    assert policy.next_expiry([occupant("busy", 0, in_flight=1, ttl=10)]) is None
    never = [occupant("forever", 0, ttl=0), occupant("short", 5, ttl=1)]
    assert policy.expired(never, now=1000) == ["short"]  # a TTL of 0 means never
    assert policy.next_expiry(never) == 6


def test_unhealthy_after_three_consecutive_failures() -> None:
    assert not policy.unhealthy(2)
    assert policy.unhealthy(3)


def test_port_candidates_skip_used_ports_and_wrap_from_the_cursor() -> None:
    assert policy.port_candidates((10, 14), in_use=[12], start=11) == [11, 13, 14, 10]
    assert policy.port_candidates((10, 14), in_use=[], start=15) == [10, 11, 12, 13, 14]
    assert policy.port_candidates((10, 11), in_use=[10, 11], start=10) == []


def test_crash_loop_backoff_grows_and_is_capped() -> None:
    rule = policy.CrashLoopRule(window_s=60, threshold=3, base_s=1, cap_s=8)
    assert policy.backoff_until([], rule) is None
    assert policy.backoff_until([10, 20], rule) is None  # two failures: try again at once
    assert policy.backoff_until([10, 20, 30], rule) == 31  # the third starts the backoff
    assert policy.backoff_until([10, 20, 30, 31], rule) == 33
    assert policy.backoff_until([10, 20, 30, 31, 33, 37, 45], rule) == 53  # capped at 8 s
    assert policy.backoff_until([0, 1, 2, 200], rule) is None  # old failures left the window
