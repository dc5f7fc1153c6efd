"""An in-memory sidecar for the pool's tests: its life runs on the trio clock, with no process or socket.

It keeps the sidecar's contract (``pool.SidecarLike``): the same states and
transitions, the same typed events in the same order, exactly one outcome. It
"loads" for ``load_s`` of trio time, then is ready until it is stopped or told
to ``crash()``; with ``fails_after_s`` it exits while loading instead. On
``trio.testing.MockClock`` a whole lease, eviction or backoff scenario takes
milliseconds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from orchestrator.errors import SpawnError
from orchestrator.flags import builtin_table
from orchestrator.footprint import Footprint
from orchestrator.policy import State, StopReason
from orchestrator.routing import LlamaServerBinary, RouteTable, SidecarSpec
from orchestrator.supervisor.events import (
    Crashed,
    Exited,
    FailedToStart,
    Outcome,
    Ready,
    SidecarEvent,
    Starting,
    Stopped,
)
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.logtail import LogFeed
from orchestrator.supervisor.memory import MemoryPlanner
from orchestrator.supervisor.pool import Pool
from orchestrator.supervisor.upstream import Upstream
from tests.conftest import make_config

_pids = itertools.count(100_000)


@dataclass(frozen=True)
class Behaviour:
    load_s: float = 1.0
    fails_after_s: float | None = None  # exit while loading after this long
    slots: int = 4


class SidecarDouble(Lifecycle):
    """A sidecar with no process: see the module docstring."""

    def __init__(
        self,
        spec: SidecarSpec,
        restarts: int,
        on_event: Callable[[SidecarEvent], None],
        behaviour: Behaviour,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.restarts = restarts
        self.slots = behaviour.slots
        self.pid: int | None = None
        self.port: int | None = None
        self.stderr = LogFeed(100)
        self.outcome: Outcome | None = None
        self.measured: Footprint | None = None
        self.ready_at: float | None = None  # trio time
        self._behaviour = behaviour
        self._on_event = on_event
        self._settled = trio.Event()
        self._exited = trio.Event()
        self._crash = trio.Event()
        self._life = trio.CancelScope()

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def label(self) -> str:
        return f"[double:{self.spec.model}:{self.restarts}]"

    @property
    def upstream(self) -> Upstream:
        raise AssertionError("a sidecar double has no child to talk to")

    def crash(self) -> None:
        """Exit on its own, as a child that dies after it was ready."""
        self._crash.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.pid, self.port = next(_pids), 0
        self._emit(Starting, pid=self.pid, port=self.port, argv=(self.spec.binary.path,))
        started = trio.current_time()
        failure: SpawnError | None = None
        try:
            with self._life:
                if self._behaviour.fails_after_s is not None:
                    await trio.sleep(self._behaviour.fails_after_s)
                    self.stderr.append("double: failed to load model")
                    message = "llama-server exited while loading (exit code 1)"
                    failure = SpawnError(message, self.stderr.tail())
                else:
                    await self._serve(started, task_status)
        finally:
            self._move(State.EXITED)
            self.outcome = self._outcome(failure, trio.current_time() - started)
            self._settled.set()
            self._exited.set()
            self._emit(Exited, outcome=self.outcome)
        if isinstance(self.outcome, FailedToStart):
            raise self.outcome.error

    async def _serve(self, started: float, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(self._behaviour.load_s)
        if self._state is State.STARTING:
            self._move(State.READY)
        self.ready_at = trio.current_time()
        self._settled.set()
        self._emit(Ready, load_s=self.ready_at - started)
        task_status.started()
        await self._crash.wait()

    def _outcome(self, failure: SpawnError | None, uptime: float) -> Outcome:
        if self._out_of_service is not None:
            return Stopped(*self._out_of_service, exit_code=0, uptime_s=uptime)
        if failure is not None:
            return FailedToStart(failure, 1, uptime)
        return Crashed(-9, ("double: crashed",), uptime)

    async def stop(self, reason: StopReason, detail: str) -> None:
        self.mark_stopping(reason, detail)
        self._life.cancel()
        await self._exited.wait()

    async def wait_settled(self) -> None:
        await self._settled.wait()

    async def wait_exited(self) -> None:
        await self._exited.wait()

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "model": self.spec.model,
            "state": self._state.value,
            "restarts": self.restarts,
        }

    def _emit(self, event: type[SidecarEvent], **details: Any) -> None:
        self._on_event(event(key=self.key, model=self.spec.model, ts=time.time(), **details))


@dataclass
class DoubleFactory:
    """Makes doubles, with a behaviour per model name; remembers every one it made."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    made: list[SidecarDouble] = field(default_factory=list)

    def __call__(
        self, spec: SidecarSpec, restarts: int, on_event: Callable[[SidecarEvent], None]
    ) -> SidecarDouble:
        double = SidecarDouble(spec, restarts, on_event, self.behaviours.get(spec.model, Behaviour()))
        self.made.append(double)
        return double

    def of(self, model: str) -> list[SidecarDouble]:
        return [double for double in self.made if double.spec.model == model]


def double_routes(tmp_path: Path, models: dict[str, dict[str, Any]], **sections: Any) -> RouteTable:
    """Routes for models whose children will be doubles (the model files only need to exist)."""
    for name, model in models.items():
        path = tmp_path / f"{name}.gguf"
        if not path.exists():  # rewriting it would give it a new identity, hence new keys
            path.write_bytes(b"GGUF")
        model.setdefault("path", str(path))
    config = make_config(tmp_path, models, **sections)
    binary = LlamaServerBinary("/nonexistent/llama-server", "test")
    settings = config.bins()
    return RouteTable(config, dict.fromkeys(settings, binary), dict.fromkeys(settings, builtin_table()))


@asynccontextmanager
async def pool_of_doubles(
    routes: RouteTable, factory: DoubleFactory, memory: MemoryPlanner | None = None
) -> AsyncIterator[Pool]:
    async with trio.open_nursery() as nursery:
        pool = Pool(routes, sidecar_factory=factory, memory=memory)
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()
