"""Admission: fit, whom to stop (pins, priorities, recency), when to wait, what never fits; sizes."""

from __future__ import annotations

import pytest

from orchestrator.admission import (
    Admit,
    Evict,
    GiB,
    MiB,
    NeverFits,
    Resident,
    Wait,
    budget_bytes,
    default_gpu_budget,
    default_host_budget,
    human,
    plan,
    size_problem,
)

BUDGET = {"Host": 10 * GiB, "CUDA0": 20 * GiB}


def resident(key: str, host: float = 0, gpu: float = 0, *, idle: bool = True, pinned: bool = False,
             priority: int = 0, last_used: float = 0) -> Resident:  # fmt: skip
    return Resident(
        key, {"Host": int(host * GiB), "CUDA0": int(gpu * GiB)}, idle, pinned, priority, last_used
    )


@pytest.mark.parametrize(
    ("need", "residents", "kind", "victims"),
    [
        ({"Host": 2 * GiB}, [], Admit, ()),
        ({"Host": 2 * GiB}, [resident("a", host=8)], Admit, ()),  # 8 + 2 = 10: just fits
        ({"Host": 3 * GiB}, [resident("a", host=8)], Evict, ("a",)),
        # The least recently used idle one goes first, and only as many as needed.
        (
            {"Host": 4 * GiB},
            [
                resident("old", host=3, last_used=1),
                resident("new", host=3, last_used=9),
                resident("x", host=3, last_used=5),
            ],
            Evict,
            ("old",),
        ),
        # Lower priority before recency; a pinned one never.
        (
            {"Host": 4 * GiB},
            [
                resident("pin", host=3, pinned=True),
                resident("low", host=3, priority=-1, last_used=9),
                resident("high", host=3, priority=5),
            ],
            Evict,
            ("low",),
        ),
        # A child that frees nothing of what is short is not stopped.
        (
            {"CUDA0": 8 * GiB},
            [resident("cpu", host=9, last_used=0), resident("gpu", gpu=15, last_used=5)],
            Evict,
            ("gpu",),
        ),
        # Busy or loading children hold it: wait.
        ({"Host": 4 * GiB}, [resident("busy", host=8, idle=False)], Wait, ()),
        ({"Host": 4 * GiB}, [resident("busy", host=7, idle=False), resident("idle", host=1)], Wait, ()),
        # Bigger than the budget, or than what pinned children leave: never.
        ({"Host": 11 * GiB}, [], NeverFits, ()),
        ({"Host": 4 * GiB}, [resident("pin", host=8, pinned=True)], NeverFits, ()),
        ({"ROCm0": 1 * GiB}, [], NeverFits, ()),  # a device this machine does not have
    ],
)
def test_admission(
    need: dict[str, int], residents: list[Resident], kind: type, victims: tuple[str, ...]
) -> None:
    decision = plan(need, residents, BUDGET)
    assert isinstance(decision, kind), decision
    if isinstance(decision, Evict):
        assert decision.victims == victims
    assert decision.reason


def test_the_count_cap_is_one_more_budget() -> None:
    two = [resident("a", host=1, last_used=1), resident("b", host=1, last_used=2)]
    assert isinstance(plan({"Host": GiB}, two, BUDGET, max_count=3), Admit)
    decision = plan({"Host": GiB}, two, BUDGET, max_count=2)
    assert (
        isinstance(decision, Evict) and decision.victims == ("a",) and "sidecars: 1 short" in decision.reason
    )
    assert isinstance(plan({"Host": GiB}, [resident("a", host=1, idle=False)], BUDGET, max_count=1), Wait)


def test_never_fits_says_the_sizes() -> None:
    decision = plan({"Host": 12 * GiB}, [], BUDGET)
    assert isinstance(decision, NeverFits)
    assert "Host: needs 12.0 GiB, budget 10.0 GiB" in decision.reason


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("20 GiB", 0, 20 * GiB), ("512MiB", 0, 512 * MiB), ("1.5 gib", 0, int(1.5 * GiB)),
        ("4 GB", 0, 4 * 10**9), ("1048576", 0, MiB), ("90%", 100 * GiB, 90 * GiB), ("12.5 %", 8 * GiB, GiB),
    ],
)  # fmt: skip
def test_sizes_and_shares(text: str, total: int, expected: int) -> None:
    assert size_problem(text) is None
    assert budget_bytes(text, total) == expected


@pytest.mark.parametrize("text", ["lots", "20 parsecs", "0%", "101%", "-3 GiB", ""])
def test_what_is_not_a_size(text: str) -> None:
    assert size_problem(text) is not None


def test_defaults_leave_a_reserve() -> None:
    assert default_host_budget(24 * GiB) == 24 * GiB - int(2.4 * GiB)  # 10%
    assert default_host_budget(8 * GiB) == 6 * GiB  # at least 2 GiB
    assert default_gpu_budget(24 * GiB) == 23 * GiB
    assert human(1536 * MiB) == "1.5 GiB" and human(512) == "512 B"
