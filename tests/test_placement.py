"""Placement: one GPU when one holds it (pack or spread), the fewest GPUs split by free budget
otherwise, eviction only where the layout needs room, waiting rather than splitting, the argv."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from orchestrator.admission import GiB, Resident
from orchestrator.placement import UNPLACED, Layout, choose, device_name_problem

TWO = {"Host": 64 * GiB, "CUDA0": 23 * GiB, "CUDA1": 23 * GiB}
FOUR = {"Host": 64 * GiB, **{f"CUDA{i}": 11 * GiB for i in range(4)}}
COMPUTE = GiB // 2  # every GPU a model runs on holds a compute buffer of its own


def model(gib: float):  # type: ignore[no-untyped-def]
    """What a model of ``gib`` GiB of weights and cache needs on a layout: shared by its split."""

    def need_of(layout: Layout) -> Mapping[str, int]:
        need = {"Host": GiB}
        shares = layout.shares or (1,) * len(layout.devices)
        for device, share in zip(layout.devices, shares, strict=True):
            need[device] = int(gib * GiB * share / sum(shares)) + COMPUTE
        return need

    return need_of


def on(key: str, device: str, gib: float, *, idle: bool = True, pinned: bool = False) -> Resident:
    return Resident(key, {"Host": GiB, device: int(gib * GiB)}, idle, pinned, last_used=0)


def gpus(budgets: Mapping[str, int]) -> list[str]:
    return [device for device in budgets if device != "Host"]


@pytest.mark.parametrize(
    ("policy", "residents", "gib", "devices"),
    [
        # Nothing running: the first GPU either way.
        ("spread", [], 10, ("CUDA0",)),
        ("pack", [], 10, ("CUDA0",)),
        # Two models that each fit one GPU: apart with spread, together with pack when both fit there.
        ("spread", [on("a", "CUDA0", 10.5)], 10, ("CUDA1",)),
        ("pack", [on("a", "CUDA0", 10.5)], 10, ("CUDA0",)),
        # Pack fills the fullest GPU that still holds it, else the next.
        ("pack", [on("a", "CUDA0", 10.5)], 14, ("CUDA1",)),
        ("pack", [on("a", "CUDA0", 15), on("b", "CUDA1", 5)], 6, ("CUDA0",)),
        # Spread takes the emptiest, whichever index it has.
        ("spread", [on("a", "CUDA0", 5), on("b", "CUDA1", 15)], 4, ("CUDA0",)),
    ],
)
def test_a_model_one_gpu_holds_runs_on_one_gpu_chosen_by_policy(
    policy: str, residents: list[Resident], gib: float, devices: tuple[str, ...]
) -> None:
    choice = choose(policy, gpus(TWO), model(gib), residents, TWO)
    assert choice.decision.kind == "admit", choice.decision.reason
    assert choice.layout == Layout(devices)
    assert choice.layout.argv() == ("--device", devices[0])
    assert set(choice.need) == {"Host", devices[0]}  # counted on its GPU only
    assert devices[0] in choice.why and policy in choice.why


def test_a_model_too_big_for_any_one_gpu_is_split_over_the_fewest_by_free_budget() -> None:
    choice = choose("spread", gpus(TWO), model(30), [on("a", "CUDA1", 4)], TWO)
    assert choice.decision.kind == "admit", choice.decision.reason
    assert choice.layout.devices == ("CUDA0", "CUDA1")
    assert choice.layout.shares == (23 * 1024, 19 * 1024)  # their free budgets, in MiB
    assert choice.layout.argv() == ("--device", "CUDA0,CUDA1", "--tensor-split", "23552,19456")
    assert choice.need["CUDA0"] > choice.need["CUDA1"] > COMPUTE  # counted on both, by the split
    assert "no single GPU" in choice.why

    four = choose("pack", gpus(FOUR), model(25), [], FOUR)  # 25 GiB over 11 GiB GPUs: three, not four
    assert four.decision.kind == "admit"
    assert four.layout.devices == ("CUDA0", "CUDA1", "CUDA2")
    assert four.layout.describe() == "CUDA0:33%+CUDA1:33%+CUDA2:33%"


def test_eviction_is_planned_for_the_gpu_the_layout_needs() -> None:
    # CUDA0 holds an idle child, CUDA1 a busy one: stop the idle one rather than wait.
    residents = [on("idle", "CUDA0", 20), on("busy", "CUDA1", 20, idle=False)]
    choice = choose("spread", gpus(TWO), model(10), residents, TWO)
    assert choice.decision.kind == "evict" and choice.decision.victims == ("idle",)
    assert choice.layout == Layout(("CUDA0",))
    # Two idle children on CUDA0, one on CUDA1: the GPU where one stop is enough.
    residents = [on("x", "CUDA0", 8), on("y", "CUDA0", 8), on("z", "CUDA1", 14)]
    choice = choose("pack", gpus(TWO), model(15), residents, TWO)
    assert choice.decision.kind == "evict" and choice.decision.victims == ("z",)
    assert choice.layout == Layout(("CUDA1",))


def test_a_model_one_gpu_holds_waits_for_busy_children_rather_than_being_split() -> None:
    residents = [on("a", "CUDA0", 15, idle=False), on("b", "CUDA1", 15, idle=False)]
    choice = choose("spread", gpus(TWO), model(12), residents, TWO)  # 6 + 6 would fit now, split
    assert choice.decision.kind == "wait"
    assert len(choice.layout.devices) == 1


def test_what_fits_no_set_of_gpus_never_fits_and_pinned_children_are_not_stopped() -> None:
    choice = choose("spread", gpus(TWO), model(60), [], TWO)
    assert choice.decision.kind == "never_fits"
    assert "CUDA" in choice.decision.reason
    pinned = [on("p0", "CUDA0", 20, pinned=True), on("p1", "CUDA1", 20, pinned=True)]
    assert choose("pack", gpus(TWO), model(10), pinned, TWO).decision.kind == "never_fits"


def test_without_gpus_to_choose_from_admission_alone_decides() -> None:
    choice = choose("spread", [], model(0), [], {"Host": 2 * GiB})
    assert choice.layout == UNPLACED and choice.layout.argv() == () and choice.why == ""
    assert choice.decision.kind == "admit"
    assert choose("spread", [], model(0), [], {"Host": GiB // 2}).decision.kind == "never_fits"


def test_the_count_cap_counts_like_a_device() -> None:
    choice = choose("spread", gpus(TWO), model(1), [on("a", "CUDA0", 1)], TWO, max_count=1)
    assert choice.decision.kind == "evict" and choice.decision.victims == ("a",)


@pytest.mark.parametrize("name", ["CUDA0", "ROCm1", "Vulkan0", "Metal", "SYCL0", "RPC-host"])
def test_gpu_names_are_accepted(name: str) -> None:
    assert device_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "0", "CPU", "none", "CUDA0,CUDA1", "cuda 0"])
def test_other_names_are_refused_saying_what_is_expected(name: str) -> None:
    problem = device_name_problem(name)
    assert problem is not None and "--list-devices" in problem and "CUDA0" in problem
