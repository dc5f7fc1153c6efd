"""Pool policy, without processes or clocks."""

from __future__ import annotations

import pytest

from orchestrator import policy
from orchestrator.policy import Occupant, State, copy_wanted, shortest_ttl


def occupant(
    key: str, last_used: float, state: State = State.READY, in_flight: int = 0, ttl: float = 0.0
) -> Occupant:
    return Occupant(key, state, in_flight, last_used, idle_ttl_s=ttl)


def test_only_a_ready_child_nobody_uses_or_waits_for_is_idle() -> None:
    assert policy.evictable(occupant("a", 5))
    assert not policy.evictable(occupant("a", 1, in_flight=1))
    assert not policy.evictable(occupant("b", 0, state=State.STARTING))
    assert not policy.evictable(occupant("c", 0, state=State.STOPPING))
    assert not policy.evictable(Occupant("a", State.READY, in_flight=0, last_used=0, waiting=1))


def test_idle_ttl_expiry_per_child() -> None:
    pool = [occupant("a", 0, ttl=10), occupant("b", 8, ttl=10), occupant("busy", 0, in_flight=1, ttl=10)]
    assert policy.expired(pool, now=10) == ["a"]
    assert policy.next_expiry(pool) == 10
    assert policy.next_expiry([occupant("busy", 0, in_flight=1, ttl=10)]) is None
    pinned = Occupant("pinned", State.READY, 0, 0, idle_ttl_s=10, pinned=True)
    assert policy.expired([pinned], now=100) == [] and policy.next_expiry([pinned]) is None
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


def history_after(failures_at: list[float], rule: policy.CrashLoopRule) -> policy.CrashHistory:
    history = policy.CrashHistory(rule)
    for at in failures_at:
        history.record("k", policy.Failure(at, f"failed at {at}"))
    return history


RULE = policy.CrashLoopRule(failures=3, window_s=60, max_backoff_s=8)


@pytest.mark.parametrize(
    ("failures_at", "now", "until", "counted"),
    [
        ([], 0, None, 0),
        ([10, 20], 20, None, 0),  # two failures: try again at once
        ([10, 20, 30], 30, 31, 3),  # the third starts the backoff
        ([10, 20, 30], 31, None, 0),  # ...which is over at 31
        ([10, 20, 30, 31], 31, 33, 4),  # each further failure doubles it
        ([10, 20, 30, 31, 33, 37, 45], 45, 53, 7),  # capped at max_backoff_s
        ([0, 1, 2, 200], 200, None, 0),  # old failures left the window
    ],
)
def test_crash_loop_backoff_grows_and_is_capped(
    failures_at: list[float], now: float, until: float | None, counted: int
) -> None:
    backoff = history_after(failures_at, RULE).backoff("k", now)
    if until is None:
        assert backoff is None
    else:
        assert backoff is not None and (backoff.until, backoff.failures) == (until, counted)
        assert backoff.last.reason == f"failed at {failures_at[-1]}"


def test_crash_history_forgets_quiet_keys_but_not_one_that_backs_off() -> None:
    history = policy.CrashHistory(policy.CrashLoopRule(failures=1, window_s=10, max_backoff_s=100))
    history.record("old", policy.Failure(0, "x"))
    history.record("old", policy.Failure(1, "x"))  # backing off until 1 + 2
    history.record("quiet", policy.Failure(3, "x"))  # backing off until 4
    history.forget_quiet(now=12.5)
    assert "old" not in history and "quiet" in history  # 'old' failed 11.5 s ago, 'quiet' 9.5 s ago
    history.forget_quiet(now=12.5 + 1)
    assert len(history) == 0
    short_window = policy.CrashHistory(policy.CrashLoopRule(failures=1, window_s=1, max_backoff_s=100))
    for at in (0, 0.4, 0.8):
        short_window.record("k", policy.Failure(at, "x"))  # a backoff of 4 s: until 4.8
    short_window.forget_quiet(now=2)
    assert "k" in short_window  # quiet for longer than its window, but still backing off: kept
    assert short_window.backoffs(now=2).keys() == {"k"}
    short_window.forget_quiet(now=5)
    assert "k" not in short_window


@pytest.mark.parametrize(
    ("current", "allowed"),
    [
        (State.STARTING, {State.READY, State.STOPPING, State.EXITED}),
        (State.READY, {State.UNHEALTHY, State.STOPPING, State.EXITED}),
        (State.UNHEALTHY, {State.EXITED}),
        (State.STOPPING, {State.EXITED}),
        (State.EXITED, set()),
    ],
)
def test_a_sidecars_life_only_moves_forward(current: State, allowed: set[State]) -> None:
    assert {state for state in State if policy.can_move(current, state)} == allowed


def serving(state: State = State.READY, in_flight: int = 1) -> Occupant:
    return occupant("k", 0.0, state, in_flight)


@pytest.mark.parametrize(
    ("copies", "replicas_max", "waited_s", "wanted"),
    [
        ([(serving(), 1)], 2, 2.0, True),  # full, waited long enough, room for one more
        ([(serving(), 1)], 2, 1.9, False),  # not long enough
        ([(serving(), 1)], 1, 60.0, False),  # no copies allowed
        ([(serving(), 1), (serving(), 1)], 2, 60.0, False),  # at replicas_max
        ([(serving(), 1), (serving(), 1)], 3, 2.0, True),
        ([(serving(in_flight=1), 2)], 2, 60.0, False),  # a free slot: it serves the queue sooner
        ([(serving(), 1), (serving(State.STARTING, 0), 1)], 3, 60.0, False),  # one is on its way
        ([], 2, 60.0, False),  # nothing to copy
    ],
)
def test_a_copy_is_wanted_only_when_every_copy_is_full_and_a_request_waited(
    copies: list[tuple[Occupant, int]], replicas_max: int, waited_s: float, wanted: bool
) -> None:
    assert copy_wanted(copies, replicas_max, waited_s, after_s=2.0) is wanted


def test_the_shortest_ttl_ignores_never() -> None:
    assert shortest_ttl(0.0, 60.0) == 60.0 and shortest_ttl(300.0, 60.0) == 60.0 and shortest_ttl(0.0) == 0.0
