"""The pool's memory: budgets per device, what each child needs, and what children really used.

A child's need is, per device, llama.cpp's own "self" (model + context +
compute) plus, on the host, what it grows into beyond that (footprint.host_extras:
the prompt cache cap, the output buffer, the process). "Self" is the figure
learned from the child's own accounting the last time this (model, flags, binary)
ran, else the estimate from its GGUF header and flags (footprint.estimate), else
the model file's size. The first start of a key runs llama-server with
``--verbosity 4`` so that it prints that accounting (see start_argv); what it says is kept on
disk (``footprints.json`` next to the state files) and every later start of the
key uses it. While a child runs, the stats sampler's measurement of its
process tree (and nvidia-smi's, where there is one) counts when it is larger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import trio

from orchestrator import admission, placement
from orchestrator.config import Config, file_identity
from orchestrator.devices import Device, list_devices
from orchestrator.dirs import state_dir
from orchestrator.flags import PLACEMENT_FLAGS
from orchestrator.footprint import HOST, Footprint, ModelFacts, Settings, estimate, host_extras, retarget
from orchestrator.ggufheader import GgufError, read_facts
from orchestrator.placement import Choice, Layout
from orchestrator.procgroup import process_family
from orchestrator.routing import LlamaServerBinary, RouteTable, SidecarSpec

log = logging.getLogger("orchestrator.supervisor.memory")

LEARNING_ARGV = ("--verbosity", "4")  # llama-server prints its memory accounting at this level
STORE_NAME = "footprints.json"
DECISIONS_KEPT = 20  # the latest admission decisions, for /api/memory
NEEDS_KEPT = 1024  # needs remembered by (key, layout); per-request flags could make keys without end


def _mib(devices: Mapping[str, int]) -> dict[str, int]:
    return {device: round(amount / admission.MiB) for device, amount in devices.items()}


@dataclass(frozen=True)
class Need:
    """What one child needs, per device (bytes), and where the figure comes from."""

    devices: Mapping[str, int]
    source: str  # learned | estimate | file size
    estimate: Footprint
    learned: Footprint | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "need_mib": _mib(self.devices),
            "source": self.source,
            "estimate_mib": _mib(self.estimate.devices),
            "learned_mib": None if self.learned is None else _mib(self.learned.devices),
        }


@dataclass
class _Learned:
    footprint: Footprint
    binary: str
    rss_bytes: int | None
    at: float


class LearnedStore:
    """Learned footprints per sidecar key (which covers the model file and the binary), on disk."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, _Learned] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable %s: %s", path, error)
            return
        for key, entry in document.get("footprints", {}).items():
            try:
                footprint = Footprint(
                    {d: int(v) for d, v in entry["devices"].items()},
                    {d: {k: int(v) for k, v in parts.items()} for d, parts in entry.get("parts", {}).items()},
                    "learned",
                )
                self._entries[key] = _Learned(
                    footprint, str(entry["binary"]), entry.get("rss_bytes"), entry["at"]
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("ignoring an unreadable entry for %s in %s", key, path)

    def get(self, key: str) -> Footprint | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.footprint

    def put(self, key: str, binary: LlamaServerBinary, footprint: Footprint, rss_bytes: int | None) -> None:
        self._entries[key] = _Learned(footprint, binary.identity, rss_bytes, time.time())

    def save(self) -> None:
        """Write every entry (blocking: run it in a thread)."""
        if self.path is None:
            return
        document = {
            "footprints": {
                key: {
                    "devices": dict(entry.footprint.devices),
                    "parts": {d: dict(p) for d, p in entry.footprint.parts.items()},
                    "binary": entry.binary,
                    "rss_bytes": entry.rss_bytes,
                    "at": entry.at,
                }
                for key, entry in self._entries.items()
            }
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(document, indent=1), "utf-8")
            partial.replace(self.path)
        except OSError as error:
            log.warning("cannot save learned footprints to %s: %s", self.path, error)


def process_tree_rss(pid: int) -> int | None:
    """Resident bytes of a process and its descendants, or None if it is gone."""
    try:
        family = process_family(pid)
    except psutil.NoSuchProcess:
        return None
    total = 0
    for process in family:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone meanwhile, or not ours to read
    return total


@dataclass
class MemoryPlanner:
    """Budgets, needs and measurements for the pool (see the module docstring)."""

    config: Config
    store: LearnedStore = field(default_factory=lambda: LearnedStore(None))
    host_total: int = field(default_factory=lambda: int(psutil.virtual_memory().total))
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    _devices: dict[str, list[Device]] = field(default_factory=dict)  # by binary path
    _facts: dict[str, ModelFacts | None] = field(default_factory=dict)  # by model file identity
    _current: dict[str, dict[str, int]] = field(default_factory=dict)  # by key: measured now
    # Needs by (key, layout): placement weighs several layouts per decision, /api/fleet every model.
    _needs: dict[tuple[str, Layout], Need] = field(default_factory=dict)

    @classmethod
    def with_learned(cls, config: Config) -> MemoryPlanner:
        """A planner that knows what this machine's children used before (the state folder's store)."""
        return cls(config, LearnedStore(state_dir() / STORE_NAME))

    # -- learning about the machine and the models (blocking: run in a thread) --------------

    def discover(self, routes: RouteTable) -> None:
        """The GPUs each binary sees and the GGUF facts of each model (blocking: run in a thread)."""
        self.config = routes.config
        self._needs.clear()  # budgets and facts may change with the configuration
        for route in routes.routes():
            binary = route.binary
            if binary.path not in self._devices:
                self._devices[binary.path] = list_devices(binary)
            identity = route.model.identity
            if identity not in self._facts:
                try:
                    self._facts[identity] = read_facts(route.model.path)
                except (GgufError, OSError) as error:
                    log.info("no memory estimate for %s: %s", route.model.path, error)
                    self._facts[identity] = None

    def gpus(self, binary: LlamaServerBinary) -> list[Device]:
        return self._devices.get(binary.path, [])

    # -- budgets ------------------------------------------------------------------------------

    def budgets(self) -> dict[str, int]:
        pool = self.config.pool
        host = (
            admission.default_host_budget(self.host_total)
            if pool.memory_budget is None
            else admission.budget_bytes(pool.memory_budget, self.host_total)
        )
        budgets = {HOST: host}
        for device in {d.name: d for devices in self._devices.values() for d in devices}.values():
            setting = pool.gpu_memory_budget.get(device.name) or pool.gpu_memory_budget.get("*")
            budgets[device.name] = (
                admission.default_gpu_budget(device.total_bytes)
                if setting is None
                else admission.budget_bytes(setting, device.total_bytes)
            )
        return budgets

    def totals(self) -> dict[str, int]:
        totals = {HOST: self.host_total}
        for devices in self._devices.values():
            totals |= {device.name: device.total_bytes for device in devices}
        return totals

    def never_fits(self, routes: RouteTable) -> list[str]:
        """Why configured children cannot run: one too big on its own, or pinned ones together."""
        budgets, problems = self.budgets(), []
        pinned: dict[str, int] = {}  # per device, what pinned children need together
        pinned_keys: set[str] = set()
        for route in routes.routes():
            if route.kind == "alias":
                continue
            spec = routes.resolve(route.name)
            need = self.need(spec)
            verdict = admission.plan(need.devices, (), budgets)
            if isinstance(verdict, admission.NeverFits):
                problems.append(
                    f"{route.kind} {route.name!r} can never start: {verdict.reason} [{need.source}]"
                )
            elif spec.placement.pin and spec.key not in pinned_keys:
                pinned_keys.add(spec.key)
                for device, amount in need.devices.items():
                    pinned[device] = pinned.get(device, 0) + amount
        over = [d for d, amount in pinned.items() if amount > budgets.get(d, amount)]
        if over:
            sizes = "; ".join(
                f"{d}: {admission.human(pinned[d])}, budget {admission.human(budgets[d])}" for d in over
            )
            problems.append(f"the pinned children together exceed the budget ({sizes})")
        return problems

    # -- a child's need -----------------------------------------------------------------------

    def need(self, spec: SidecarSpec, layout: Layout = placement.UNPLACED) -> Need:
        """What a child of ``spec`` needs on ``layout`` (empty: where its own flags put it)."""
        cached = self._needs.get((spec.config_key, layout))
        if cached is not None:
            return cached
        facts = self._facts.get(self._identity(spec.model_path))
        settings = Settings.of(spec.flags, facts.n_ctx_train if facts else 4096)
        if layout.devices:
            settings = dataclasses.replace(settings, devices=layout.devices)
            gpus = list(zip(layout.devices, layout.shares or (1,), strict=True))
        else:
            budgets = self.budgets()
            gpus = [(d.name, budgets.get(d.name, d.total_bytes)) for d in self.gpus(spec.binary)]
        if facts is not None:
            estimated = estimate(facts, settings, gpus)
        else:
            estimated = Footprint({HOST: self._file_size(spec.model_path)}, source="file size")
        learned = self.store.get(spec.config_key)
        if learned is not None and layout.devices:
            learned = retarget(learned, layout.devices, layout.shares)
        base = learned or estimated
        devices = dict(base.plus(HOST, host_extras(facts, settings)).devices)
        if len(self._needs) >= NEEDS_KEPT:
            self._needs.clear()
        need = self._needs[(spec.config_key, layout)] = Need(devices, base.source, estimated, learned)
        return need

    def placeable(
        self, spec: SidecarSpec, knows: Callable[[str], bool], avoid: Collection[str] = ()
    ) -> list[str]:
        """The GPUs the pool may choose among for ``spec`` (none: its placement is not the pool's),
        without those in ``avoid`` unless that leaves none."""
        gpus = [device.name for device in self.gpus(spec.binary)]
        if self.config.pool.placement == "off" or not gpus or not knows("--device"):
            return []
        if any(spec.sets(name) for name in PLACEMENT_FLAGS):
            return []  # the user placed it
        settings = Settings.of(spec.flags, 0)
        if settings.gpu_layers == 0 or any(not d.upper().startswith("CPU") for _p, d in settings.overrides):
            return []  # nothing on a GPU, or tensors sent to named devices by hand
        return [gpu for gpu in gpus if gpu not in avoid] or gpus

    def sample_placement(self, routes: RouteTable) -> list[tuple[str, Choice]]:
        """Where each configured model and agent would go if all were started in turn, none stopped."""
        residents: list[admission.Resident] = []
        placed: list[tuple[str, Choice]] = []
        for route in routes.routes():
            spec = routes.resolve(route.name)
            if route.kind == "alias" or any(r.key == spec.key for r in residents):
                continue
            choice = self.place(spec, partial(routes.binary_knows, spec.binary), residents, 0)
            placed.append((route.name, choice))
            if choice.decision.kind == "admit":  # busy, so that nothing is stopped for the next
                residents.append(admission.Resident(spec.key, choice.need, idle=False))
        return placed

    def devices_of(self, spec: SidecarSpec, layout: Layout = placement.UNPLACED) -> list[str]:
        """The GPUs a child of ``spec`` runs on: its placement's, else where its flags put it (all by
        default)."""
        if layout.devices:
            return list(layout.devices)
        settings = Settings.of(spec.flags, 0)
        if settings.gpu_layers == 0:
            return []
        allowed = settings.devices
        return [d.name for d in self.gpus(spec.binary) if allowed is None or d.name in allowed]

    def place(
        self,
        spec: SidecarSpec,
        knows: Callable[[str], bool],
        residents: list[admission.Resident],
        max_count: int,
        avoid: Collection[str] = (),
    ) -> Choice:
        """Where a child of ``spec`` would go now (on GPUs not in ``avoid`` where it can), and
        admission's decision about it there."""
        return placement.choose(
            self.config.pool.placement,
            self.placeable(spec, knows, avoid),
            lambda layout: self.need(spec, layout).devices,
            residents,
            self.budgets(),
            max_count=max_count,
        )

    def current(self, key: str, need: Need) -> dict[str, int]:
        """What a live child counts for now: its need, or what it was measured using when more."""
        measured = self._current.get(key, {})
        return {
            device: max(need.devices.get(device, 0), measured.get(device, 0))
            for device in {*need.devices, *measured}
        }

    def observe(self, key: str, devices: Mapping[str, int]) -> None:
        """A live child's measured use (the stats sampler's), per device."""
        self._current[key] = dict(devices)

    def forget(self, keys_alive: Iterable[str]) -> None:
        alive = set(keys_alive)
        for key in [k for k in self._current if k not in alive]:
            del self._current[key]

    def start_argv(self, spec: SidecarSpec, knows: Callable[[str], bool]) -> tuple[str, ...]:
        """What a start of ``spec`` adds to its command line (``knows``: the binary declares a flag).

        The context size and the GPU layers it would pick are made explicit (the model's trained
        context, every layer), so that llama.cpp's --fit, which sizes what is left unset to the
        memory free at the start, cannot take what the pool planned for the other children; it
        then only projects its use, which it prints at ``--verbosity 4``. That is asked for on
        a key's first start, to learn it.
        """
        extra: list[str] = []
        facts = self._facts.get(self._identity(spec.model_path))
        if facts is not None and not spec.sets("--ctx-size") and knows("--ctx-size"):
            extra += ["--ctx-size", str(facts.n_ctx_train)]
        if self.gpus(spec.binary) and not spec.sets("--gpu-layers") and knows("--gpu-layers"):
            extra += ["--gpu-layers", "all"]
        if self.store.get(spec.config_key) is None and not spec.sets("--verbosity") and knows("--verbosity"):
            extra += LEARNING_ARGV
        return tuple(extra)

    def record(self, spec: SidecarSpec, measured: Footprint | None, pid: int | None) -> bool:
        """Keep what a child that just became ready reported about itself; True if there is news."""
        rss = None if pid is None else process_tree_rss(pid)
        if measured is None:
            return False  # it printed no accounting (an old build, or it was not asked to)
        self.store.put(spec.config_key, spec.binary, measured, rss)
        self._needs = {k: v for k, v in self._needs.items() if k[0] != spec.config_key}
        estimated = self.need(spec).estimate
        log.info(
            "learned what %s uses: %s (the estimate was %s)",
            spec.model,
            ", ".join(f"{d} {admission.human(v)}" for d, v in measured.devices.items()),
            ", ".join(f"{d} {admission.human(v)}" for d, v in estimated.devices.items()),
        )
        return True

    async def save(self) -> None:
        await trio.to_thread.run_sync(self.store.save)

    def _identity(self, path: str) -> str:
        try:
            return file_identity(Path(path))
        except OSError:
            return path  # gone: its facts are unknown

    @staticmethod
    def _file_size(path: str) -> int:
        try:
            return Path(path).stat().st_size
        except OSError:
            return 0
