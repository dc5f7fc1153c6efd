"""Admission: whether a new child fits the memory budgets (and the count cap), and whom to stop for it.

Pure. Every device (the host, each GPU) has a budget; every live child uses
some of each; a new one needs some of each. It is admitted when it fits every
device it needs; otherwise idle children are stopped, lowest ``priority``
first and the least recently used among equals (never a busy, loading or
pinned one), until it fits; if busy or loading children hold what is missing,
the request waits; if it cannot fit even with every unpinned child gone, it is
refused at once and nobody is stopped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

GiB = 1 << 30
MiB = 1 << 20
COUNT = "sidecars"  # the count cap (pool.max_sidecars) as one more resource: each child uses 1
HOST_RESERVE_FRACTION = 0.10  # left to the system by default: 10% of RAM, at least 2 GiB
HOST_RESERVE_MIN = 2 * GiB
GPU_RESERVE = 1 * GiB  # per GPU: llama.cpp's own --fit-target default, for the driver and fragmentation
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": MiB, "mb": 1000**2, "mib": MiB,
          "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def size_problem(text: str) -> str | None:
    """Why ``text`` is not a size ("20 GiB", "512 MiB") or a share ("90%"), or None."""
    if _SHARE.match(text):
        share = float(_SHARE.match(text).group(1))  # type: ignore[union-attr]
        return None if 0 < share <= 100 else f"{text!r}: a share must be more than 0% and at most 100%"
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        return f"{text!r} is not a size; expected e.g. '20 GiB', '512 MiB' or a share of the device, '90%'"
    return None


def budget_bytes(text: str, total: int) -> int:
    """A budget setting (a size or a share of ``total``) in bytes; see size_problem for the forms."""
    if share := _SHARE.match(text):
        return int(total * float(share.group(1)) / 100)
    match = _SIZE.match(text)
    assert match is not None, text
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def default_host_budget(total: int) -> int:
    return total - max(HOST_RESERVE_MIN, int(total * HOST_RESERVE_FRACTION))


def default_gpu_budget(total: int) -> int:
    return max(0, total - GPU_RESERVE)


def human(size: int) -> str:
    """1536 MiB -> '1.5 GiB'."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


@dataclass(frozen=True)
class Resident:
    """A live child as admission sees it."""

    key: str
    usage: Mapping[str, int]  # per device, bytes
    idle: bool  # ready, with nothing in flight and no one waiting for it
    pinned: bool = False
    priority: int = 0
    last_used: float = 0.0


@dataclass(frozen=True)
class Admit:
    kind: ClassVar[str] = "admit"
    reason: str


@dataclass(frozen=True)
class Evict:
    kind: ClassVar[str] = "evict"
    victims: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Wait:
    kind: ClassVar[str] = "wait"
    reason: str


@dataclass(frozen=True)
class NeverFits:
    kind: ClassVar[str] = "never_fits"
    reason: str


Decision = Admit | Evict | Wait | NeverFits


def _shown(device: str, amount: int) -> str:
    return str(amount) if device == COUNT else human(amount)


def plan(
    need: Mapping[str, int],
    residents: Iterable[Resident],
    budgets: Mapping[str, int],
    max_count: int = 0,
) -> Decision:
    """What to do about a child that needs ``need`` (bytes per device), given who lives where."""
    residents = list(residents)
    need = {device: amount for device, amount in need.items() if amount > 0}
    budgets = dict(budgets)
    if max_count > 0:
        need[COUNT], budgets[COUNT] = 1, max_count
    residents = [
        Resident(r.key, {**r.usage, COUNT: 1}, r.idle, r.pinned, r.priority, r.last_used) for r in residents
    ]
    unknown = [device for device in need if device not in budgets]
    if unknown:
        return NeverFits(
            f"it needs {', '.join(unknown)}, which this machine does not have (known: {', '.join(budgets)})"
        )
    too_big = [d for d in need if need[d] > budgets[d]]
    if too_big:
        sizes = "; ".join(f"{d}: needs {_shown(d, need[d])}, budget {_shown(d, budgets[d])}" for d in too_big)
        return NeverFits(f"it is larger than the budget even with nothing else running ({sizes})")
    used = {d: sum(r.usage.get(d, 0) for r in residents) for d in need}
    short = {d: used[d] + need[d] - budgets[d] for d in need if used[d] + need[d] > budgets[d]}
    if not short:
        free = "; ".join(f"{d}: {_shown(d, need[d])} of {_shown(d, budgets[d] - used[d])} free" for d in need)
        return Admit(f"it fits ({free})")
    pinned_hold = {d: sum(r.usage.get(d, 0) for r in residents if r.pinned) for d in short}
    if any(pinned_hold[d] + need[d] > budgets[d] for d in short):
        held = "; ".join(f"{d}: pinned children hold {_shown(d, pinned_hold[d])}" for d in short)
        return NeverFits(
            f"it cannot fit while pinned children run ({held}); pinned ones are only stopped by hand"
        )
    victims: list[str] = []
    missing = dict(short)
    for resident in sorted(
        (r for r in residents if r.idle and not r.pinned), key=lambda r: (r.priority, r.last_used, r.key)
    ):
        if not any(resident.usage.get(d, 0) > 0 for d, amount in missing.items() if amount > 0):
            continue  # frees nothing that is short
        victims.append(resident.key)
        missing = {d: amount - resident.usage.get(d, 0) for d, amount in missing.items()}
        if all(amount <= 0 for amount in missing.values()):
            return Evict(
                tuple(victims), f"stopping {len(victims)} idle child(ren) to make room ({_describe(short)})"
            )
    return Wait(f"busy or loading children hold what it needs ({_describe(short)})")


def _describe(short: Mapping[str, int]) -> str:
    return "; ".join(f"{d}: {_shown(d, amount)} short" for d, amount in short.items())
