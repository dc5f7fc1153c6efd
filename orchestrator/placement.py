"""Placement: which of a box's GPUs a new child runs on, chosen with admission.

Pure. Told nothing, llama.cpp spreads every model over every GPU it sees, so
each child holds a piece of every GPU and two models that would each fit one
GPU both cross the PCIe bus. Instead, a child whose placement the pool may
choose gets ``--device``:

- a model that one GPU's budget holds runs on one GPU (``--device CUDA1``:
  with one device there is nothing to split, so no ``--split-mode`` or
  ``--main-gpu`` is needed, and the device keeps the name it has in
  ``--list-devices`` and in the child's own memory accounting; hiding GPUs
  with ``CUDA_VISIBLE_DEVICES`` would renumber them, and differs per backend);
- a model too big for any one GPU is split over the fewest GPUs that hold it,
  in proportion to their free budget (``--device CUDA0,CUDA1 --tensor-split
  a,b``, llama.cpp's default layer split).

Among the candidates with the fewest GPUs, one that fits now beats one that
needs idle children stopped (fewest victims first), which beats one that must
wait for busy children; ``pack`` then prefers the GPU left fullest (keeping
whole GPUs free for big models), ``spread`` the one left emptiest (each model
its own GPU and memory bandwidth, as Ollama does). A placement the user fixed
(``--device``, ``--main-gpu``, ``--tensor-split`` or ``--split-mode`` in the
flags, or ``devices`` in the config) is never changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from orchestrator import admission

POLICIES = ("spread", "pack", "off")  # off: llama.cpp's own (every model over every GPU)
_KIND_ORDER = {"admit": 0, "evict": 1, "wait": 2}
_DEVICE_NAME = re.compile(r"^[A-Za-z][\w-]*$")  # as --list-devices names them: CUDA0, Vulkan1, Metal


def device_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a GPU's name (``devices`` in the config), or None."""
    if _DEVICE_NAME.match(name) and not name.upper().startswith("CPU") and name.lower() != "none":
        return None
    return (
        f"{name!r} is not a GPU's name; expected one that `llama-server --list-devices` prints, "
        "such as 'CUDA0', 'ROCm1', 'Vulkan0' or 'Metal'"
    )


@dataclass(frozen=True)
class Layout:
    """The GPUs a child runs on, and how its layers are shared among them.

    ``devices`` empty: not placed by the pool (no GPU, or the user's flags say where).
    """

    devices: tuple[str, ...] = ()
    shares: tuple[int, ...] = ()  # --tensor-split proportions (MiB of budget), with more than one device

    def argv(self) -> tuple[str, ...]:
        if not self.devices:
            return ()
        argv: tuple[str, ...] = ("--device", ",".join(self.devices))
        if len(self.devices) > 1:
            argv += ("--tensor-split", ",".join(str(share) for share in self.shares))
        return argv

    def describe(self) -> str:
        if len(self.devices) < 2:
            return ",".join(self.devices) or "-"
        return "+".join(f"{d}:{s}" for d, s in zip(self.devices, self._percent(), strict=True))

    def _percent(self) -> list[str]:
        total = sum(self.shares) or 1
        return [f"{round(100 * share / total)}%" for share in self.shares]


UNPLACED = Layout()


@dataclass(frozen=True)
class Choice:
    """A layout, what the child needs there (bytes per device), admission's decision, and why."""

    layout: Layout
    need: Mapping[str, int]
    decision: admission.Decision
    why: str


NeedOf = Callable[[Layout], Mapping[str, int]]


def choose(
    policy: str,
    gpus: Sequence[str],
    need_of: NeedOf,
    residents: Sequence[admission.Resident],
    budgets: Mapping[str, int],
    *,
    max_count: int = 0,
) -> Choice:
    """Where a new child goes (``gpus``: the GPUs the pool may choose from, in the binary's order).

    ``need_of``: what the child needs, per device, on a layout. With no GPUs to choose
    from, the layout is empty and the decision is admission's alone.
    """
    if not gpus:
        need = need_of(UNPLACED)
        return Choice(UNPLACED, need, admission.plan(need, residents, budgets, max_count), "")
    used = _sum_usage(residents)
    held = _sum_usage(r for r in residents if r.pinned or not r.idle)  # cannot be stopped for room
    free = {gpu: budgets.get(gpu, 0) - used.get(gpu, 0) for gpu in gpus}
    reclaimable = {gpu: budgets.get(gpu, 0) - held.get(gpu, 0) for gpu in gpus}
    last: Choice | None = None
    for count in range(1, len(gpus) + 1):
        options: list[tuple[tuple[float, ...], Choice]] = []
        for devices in combinations(gpus, count):
            bases = (budgets,) if count == 1 else (free, reclaimable, budgets)
            for base in bases:
                layout = Layout(devices, () if count == 1 else _shares(devices, base))
                need = need_of(layout)
                decision = admission.plan(need, residents, budgets, max_count)
                last = Choice(layout, need, decision, "")
                if decision.kind in _KIND_ORDER:
                    options.append((_rank(policy, last, free, gpus), last))
        if options:
            _rank_key, best = min(options, key=lambda option: option[0])
            return Choice(best.layout, best.need, best.decision, _why(policy, best, count, free, budgets))
    assert last is not None  # at least one GPU, so at least one candidate
    return Choice(last.layout, last.need, last.decision, "no set of this machine's GPUs holds it")


def _sum_usage(residents: Iterable[admission.Resident]) -> dict[str, int]:
    total: dict[str, int] = {}
    for resident in residents:
        for device, amount in resident.usage.items():
            total[device] = total.get(device, 0) + amount
    return total


def _shares(devices: Sequence[str], base: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(max(1, base.get(device, 0) // admission.MiB) for device in devices)


def _rank(policy: str, choice: Choice, free: Mapping[str, int], gpus: Sequence[str]) -> tuple[float, ...]:
    """Smaller is better: fits now, then fewest stopped, then the policy, then the GPUs' order."""
    decision, layout, need = choice.decision, choice.layout, choice.need
    victims = len(decision.victims) if isinstance(decision, admission.Evict) else 0
    left = sum(free[device] - need.get(device, 0) for device in layout.devices)
    by_policy = left if policy == "pack" else -left
    return (_KIND_ORDER[decision.kind], victims, by_policy, *(gpus.index(d) for d in layout.devices))


def _why(policy: str, choice: Choice, count: int, free: Mapping[str, int], budgets: Mapping[str, int]) -> str:
    layout, need = choice.layout, choice.need
    if count > 1:
        sizes = admission.human(sum(need.get(device, 0) for device in layout.devices))
        return (
            f"no single GPU's budget holds its {sizes}: split over {', '.join(layout.devices)} "
            f"({layout.describe()}, in proportion to their free budget)"
        )
    (device,) = layout.devices
    room = f"{admission.human(need.get(device, 0))} of {admission.human(max(0, free[device]))} free"
    others = [gpu for gpu in free if gpu != device]
    if not others:
        return f"{device}: the only GPU ({room})"
    if choice.decision.kind != "admit":
        return f"{device}: one GPU holds it; {choice.decision.kind} there ({room})"
    wording = "leaves it fullest (pack)" if policy == "pack" else "has the most free memory (spread)"
    return f"{device} {wording}: {room}; others: " + ", ".join(
        f"{gpu} {admission.human(max(0, free[gpu]))} free of {admission.human(budgets.get(gpu, 0))}"
        for gpu in others
    )
