"""The pool: the registry of sidecars, leases, spawn coalescing, eviction, idle TTL, crash loops.

Every sidecar runs in the pool's nursery, never in the request that caused it,
so a client that goes away mid-spawn does not kill the child. All bookkeeping
is synchronous between checkpoints, so trio's scheduling makes "check state,
then act" atomic: a request that leases a child and an eviction that picks it
cannot interleave.

The contract with a sidecar (``SidecarLike``): the pool makes one through its
factory, runs it, reads its state and outcome, and is told its life through
typed events; it never writes a sidecar's fields. Leases, waiting requests,
last use and draining are the pool's own bookkeeping (``_Tenancy``). With a
sidecar double as the factory, all of the pool's policy runs on trio's mock
clock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol

import trio

from orchestrator import admission, policy
from orchestrator.config import LlamaServerSettings, PoolSettings
from orchestrator.errors import (
    BackoffError,
    CapacityError,
    InsufficientMemoryError,
    OrchestratorError,
    OverloadedError,
    SpawnError,
)
from orchestrator.footprint import Footprint
from orchestrator.placement import Choice
from orchestrator.policy import CrashHistory, Failure, Occupant, State, StopReason
from orchestrator.procgroup import child_environment
from orchestrator.routing import CHILD_HOST, RouteTable, SidecarSpec
from orchestrator.supervisor.events import (
    BackingOff,
    Evicted,
    Exited,
    FailedToStart,
    Outcome,
    PoolEvent,
    Published,
    Ready,
    Reloaded,
    RequestFigures,
    RequestFinished,
    RequestRefused,
    RequestStarted,
    SidecarEvent,
    Spawned,
    Starting,
    Unhealthy,
)
from orchestrator.supervisor.fanout import FanOut
from orchestrator.supervisor.kvcache import KvCache
from orchestrator.supervisor.logtail import LogFeed
from orchestrator.supervisor.memory import MemoryPlanner, Need
from orchestrator.supervisor.sidecar import Sidecar
from orchestrator.supervisor.upstream import Upstream

COPY_PRIORITY_DROP = 1 << 20  # below any configured priority: idle copies go first for room
KEEP_ALIVE_NOW_S = 1e-3  # keep_alive 0: idle TTL 0 means "never", so the shortest one instead
log = logging.getLogger("orchestrator.supervisor.pool")


class SidecarLike(Protocol):
    """What the pool needs of a sidecar (``Sidecar``, or a double in the tests)."""

    spec: SidecarSpec
    restarts: int
    slots: int
    pid: int | None
    port: int | None
    stderr: LogFeed
    outcome: Outcome | None
    measured: Footprint | None  # what it said it uses (llama-server's accounting), once ready
    ready_at: float | None  # when it became ready, if it did

    @property
    def key(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def upstream(self) -> Upstream: ...
    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...
    def mark_stopping(self, reason: StopReason, detail: str) -> bool: ...
    async def stop(self, reason: StopReason, detail: str) -> None: ...
    async def wait_settled(self) -> None: ...
    async def wait_exited(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


# Makes the sidecar for a spec; it reports its life through the callback it is given.
SidecarFactory = Callable[[SidecarSpec, int, Callable[[SidecarEvent], None]], SidecarLike]


def _sizes(devices: Mapping[str, int]) -> str:
    return ", ".join(f"{device} {admission.human(amount)}" for device, amount in devices.items())


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` on the children's loopback address right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((CHILD_HOST, port))
        except OSError:
            return False  # in use by someone else
    return True


class ChildGuard(Protocol):
    """Told about every child process, so it can kill them if the daemon dies (see watchdog)."""

    def register(self, pid: int) -> None: ...
    def unregister(self, pid: int) -> None: ...


class _Tenancy:
    """The pool's bookkeeping about one live sidecar: its leases and the requests waiting for it."""

    def __init__(self, sidecar: SidecarLike, need: Need, placed: Choice, line: deque[object]) -> None:
        self.sidecar = sidecar
        self.need = need  # what admission counts it for
        self.placed = placed  # the GPUs it was given, and why
        self.in_flight = 0
        self.waiting = 0  # requests waiting for it: to become ready, or for a free slot
        # Those waiting for a slot, first come first served: one line for every copy of a child.
        self.queue = line
        self.last_used = trio.current_time()
        self.idle = trio.Event()  # set while nothing is in flight
        self.idle.set()
        self.idle_ttl_s = sidecar.spec.idle_ttl_s  # 0: never; a request may set another (keep_alive)

    def occupant(self) -> Occupant:
        s = self.sidecar
        pinned = s.spec.placement.pin and not s.spec.copy_of  # a copy is never kept for its own sake
        return Occupant(s.key, s.state, self.in_flight, self.last_used, self.waiting, self.idle_ttl_s, pinned)


class Pool:
    """Owns every sidecar; hands out leases on ready ones."""

    def __init__(
        self,
        routes: RouteTable,
        guard: ChildGuard | None = None,
        sidecar_factory: SidecarFactory | None = None,
        memory: MemoryPlanner | None = None,
        kv: KvCache | None = None,
    ) -> None:
        self.routes = routes
        self.memory = memory or MemoryPlanner(routes.config)
        self.kv = kv  # children's KV cache across swaps (None: not kept)
        self.draining = False  # shutting down: routers in front should send no new requests
        if kv is not None:
            kv.on_event = self._on_kv_event
        self._guard = guard
        self._make_sidecar = sidecar_factory or self._real_sidecar
        self.evictions = 0
        self.events: FanOut[Published] = FanOut()
        # Called with every event, synchronously and before the feeds (metrics: nothing may be lost).
        self.observers: list[Callable[[PoolEvent], None]] = []
        self._live: dict[str, _Tenancy] = {}
        self._spawns: dict[str, int] = {}  # per key; forgotten with its crash history (see _forget)
        self._crashes = CrashHistory(routes.config.pool.crash_loop)
        self._changed = trio.Event()
        self._expiry_alarm = math.inf  # when _expire_idle looks next, unless woken sooner
        self._expiry_review = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._adding: set[str] = set()  # keys a copy is being started for
        self._live_copies = 0  # live children that are copies (see _copies)
        self._port_cursor = self._settings.port_range[0]

    @property
    def _settings(self) -> LlamaServerSettings:
        return self.routes.config.llama_server

    @property
    def _pool_settings(self) -> PoolSettings:
        return self.routes.config.pool

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the sidecars until cancelled; cancellation stops every child."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._expire_idle)
            task_status.started()
            await trio.sleep_forever()

    # -- leases ------------------------------------------------------------

    @asynccontextmanager
    async def lease(
        self, spec: SidecarSpec, figures: Callable[[], RequestFigures] | None = None
    ) -> AsyncIterator[SidecarLike]:
        """A ready sidecar for ``spec``, counted in flight until the block ends.

        ``figures`` (a request's, not a preload's) is asked for how the request went when the
        lease ends, and goes with its RequestFinished event.
        """
        tenancy = await self._acquire(spec)
        sidecar = tenancy.sidecar
        self._publish(sidecar, RequestStarted, in_flight=tenancy.in_flight)
        try:
            yield sidecar
        finally:
            tenancy.in_flight -= 1
            tenancy.last_used = trio.current_time()
            ttl = tenancy.idle_ttl_s
            if tenancy.in_flight == 0:
                tenancy.idle.set()
            finished = None if figures is None else figures()
            self._publish(sidecar, RequestFinished, in_flight=tenancy.in_flight, figures=finished)
            self._notify(idle_until=tenancy.last_used + ttl if ttl and not tenancy.in_flight else math.inf)

    def refused(self, model: str | None, figures: RequestFigures) -> None:
        """A request answered without a child (an error of ours): for the metrics and the feeds."""
        self.publish(RequestRefused(model=model, ts=time.time(), figures=figures))

    async def preload(self, spec: SidecarSpec) -> SidecarLike:
        """Make sure a child for ``spec`` is running (spawning it if needed), without a request."""
        async with self.lease(spec) as sidecar:
            return sidecar

    async def _acquire(self, spec: SidecarSpec) -> _Tenancy:
        deadline = trio.current_time() + self._pool_settings.capacity_wait_s
        while True:
            copies = self._copies(spec.key)
            if len(copies) == 1:
                tenancy = copies[0]
            elif copies:
                tenancy = min(copies, key=self._busyness)
            else:
                self._refuse_while_backing_off(spec)
                room = await self._make_room(spec, deadline)
                tenancy = room if isinstance(room, _Tenancy) else self._spawn(spec, room)
            sidecar = tenancy.sidecar
            if sidecar.state is State.STARTING:
                # Counted as waiting, the child is not evicted before its waiters could use it.
                tenancy.waiting += 1
                try:
                    await sidecar.wait_settled()
                finally:
                    tenancy.waiting -= 1
            if sidecar.state is State.READY:
                free = None if tenancy.queue else self._free_copy(copies or [tenancy])
                if free is not None:
                    self._take_slot(free)
                    return free
                taken = await self._queue_for(tenancy, deadline)
                if taken is not None:
                    return taken
                continue
            if isinstance(sidecar.outcome, FailedToStart):
                raise sidecar.outcome.error  # the next request tries again (or meets the backoff)
            # It is being stopped (evicted, unhealthy, reloaded) or it crashed: wait, then respawn.
            await sidecar.wait_exited()
            self._gone(tenancy)  # done already when it said it exited; never leave it registered

    def _copies(self, key: str) -> list[_Tenancy]:
        """The live children of ``key`` (a configuration's key), the first started first."""
        if not self._live_copies:  # the per-request fast path: no copies anywhere
            first = self._live.get(key)
            return [] if first is None else [first]
        return [t for t in self._live.values() if t.sidecar.spec.config_key == key]

    def _busyness(self, tenancy: _Tenancy) -> tuple[int, int]:
        """Which copy a request goes to: a ready one before one starting, then the least busy."""
        state = tenancy.sidecar.state
        rank = 0 if state is State.READY else 1 if state is State.STARTING else 2
        return rank, tenancy.in_flight + tenancy.waiting

    def _free_copy(self, copies: list[_Tenancy]) -> _Tenancy | None:
        """The ready one of ``copies`` with a free slot and the fewest requests, if any."""
        free = None
        for tenancy in copies:
            if tenancy.sidecar.state is State.READY and self._slot_free(tenancy):
                free = tenancy if free is None or tenancy.in_flight < free.in_flight else free
        return free

    def _max_in_flight(self, sidecar: SidecarLike) -> int:
        return self._pool_settings.max_in_flight or sidecar.slots

    def _slot_free(self, tenancy: _Tenancy) -> bool:
        return tenancy.in_flight < self._max_in_flight(tenancy.sidecar)

    @staticmethod
    def _take_slot(tenancy: _Tenancy) -> None:
        tenancy.in_flight += 1
        tenancy.idle = trio.Event() if tenancy.in_flight == 1 else tenancy.idle

    async def _queue_for(self, tenancy: _Tenancy, deadline: float) -> _Tenancy | None:
        """Wait in line (bounded) for a slot of a busy child or of any copy of it; the copy whose
        slot was taken, or None if ``tenancy`` left service.

        First come, first served: a free slot goes to the head of the line, never to whoever
        wakes first (under load that could starve a request past its deadline). 429 when the
        line is full. A request that waits pool.replica_wait_s may start another copy.
        """
        sidecar = tenancy.sidecar
        if tenancy.waiting >= self._pool_settings.max_queue:
            raise OverloadedError(
                f"{sidecar.spec.model} is serving {tenancy.in_flight} requests (its limit) and "
                f"{tenancy.waiting} more are waiting (pool.max_queue); try again shortly",
                retry_after_s=1,
            )
        ticket = object()
        tenancy.queue.append(ticket)
        tenancy.waiting += 1  # a child with waiters is not idle: never evicted under them
        key = sidecar.spec.config_key
        queued_at = trio.current_time()
        copy_at = queued_at + self._pool_settings.replica_wait_s
        if sidecar.spec.placement.replicas_max < 2:
            copy_at = math.inf
        try:
            with trio.move_on_at(deadline):
                while sidecar.state is State.READY:
                    free = self._free_copy(self._copies(key)) if tenancy.queue[0] is ticket else None
                    if free is not None:
                        self._take_slot(free)
                        return free
                    with trio.move_on_at(copy_at):
                        await self._changed.wait()
                    if trio.current_time() >= copy_at:
                        copy_at = math.inf  # once per request: a steady queue keeps asking
                        self._consider_copy(sidecar.spec, trio.current_time() - queued_at)
                return None  # stopping or gone: the caller waits for it and starts another
        finally:
            tenancy.queue.remove(ticket)
            tenancy.waiting -= 1
            self._notify()  # the next in line may go now
        wait = self._pool_settings.capacity_wait_s  # only the deadline ends the line without a return
        raise CapacityError(
            f"{sidecar.spec.model} stayed busy for {wait:g} s (pool.capacity_wait_s)", retry_after_s=1
        )

    async def _make_room(self, spec: SidecarSpec, deadline: float) -> _Tenancy | Choice:
        """Wait until ``spec``'s child fits the memory budgets and the count cap (see admission)
        on the GPUs placement chooses for it; return that choice.

        Stops idle children to make room; waits (bounded) while busy ones hold it;
        refuses at once what can never fit. Returns the tenancy of a sidecar for
        ``spec`` instead if another request spawned one meanwhile.
        """
        while True:
            existing = self._live.get(spec.key) or next(iter(self._copies(spec.key)), None)
            if existing is not None:
                return existing
            placed = self._place(spec)
            decision = placed.decision
            need = self.memory.need(spec, placed.layout)
            self.memory.decisions.append(
                {
                    "at": time.time(),
                    "model": spec.model,
                    "key": spec.key,
                    "decision": decision.kind,
                    "reason": decision.reason,
                    "devices": list(placed.layout.devices),
                    "placement": placed.why,
                    **need.to_json(),
                }
            )
            if isinstance(decision, admission.Admit):
                return placed
            if isinstance(decision, admission.NeverFits):
                raise InsufficientMemoryError(
                    f"{spec.model} cannot start: {decision.reason}. Its need ({need.source}): "
                    f"{_sizes(need.devices)}; budgets: {_sizes(self.memory.budgets())} "
                    "(pool.memory_budget, pool.gpu_memory_budget, pool.max_sidecars)"
                )
            if isinstance(decision, admission.Evict):
                victims = [self._live[key] for key in decision.victims]
                for victim in victims:
                    self._stop_soon(
                        victim, StopReason.LRU, f"to make room for {spec.model}: {decision.reason}"
                    )
                for victim in victims:
                    await victim.sidecar.wait_exited()
                continue
            with trio.move_on_at(deadline):
                await self._changed.wait()
            if trio.current_time() >= deadline:
                wait = self._pool_settings.capacity_wait_s
                raise CapacityError(
                    f"{spec.model} waited {wait:g} s (pool.capacity_wait_s) for room: {decision.reason}",
                    retry_after_s=max(1, math.ceil(wait / 4)),
                )

    def _residents(self) -> list[admission.Resident]:
        residents = []
        for tenancy in self._live.values():
            occupant = tenancy.occupant()
            placement = tenancy.sidecar.spec.placement
            # Idle copies beyond the first are the first to go for room.
            priority = placement.priority - COPY_PRIORITY_DROP * bool(tenancy.sidecar.spec.copy_of)
            residents.append(
                admission.Resident(
                    occupant.key,
                    self.memory.current(occupant.key, tenancy.need),
                    policy.evictable(occupant),
                    occupant.pinned,
                    priority,
                    occupant.last_used,
                )
            )
        return residents

    # -- copies of a busy child ------------------------------------------------

    def _consider_copy(self, spec: SidecarSpec, waited_s: float) -> None:
        """A request has waited ``waited_s`` for a slot of ``spec``'s child: start another copy if the
        policy wants one (and none is being added already)."""
        key = spec.config_key
        copies = [(t.occupant(), self._max_in_flight(t.sidecar)) for t in self._copies(key)]
        settings = self._pool_settings
        if key in self._adding or not policy.copy_wanted(
            copies, spec.placement.replicas_max, waited_s, settings.replica_wait_s
        ):
            return
        assert self._nursery is not None
        self._adding.add(key)
        self._nursery.start_soon(self._add_copy, self._copies(key)[0], waited_s)

    async def _add_copy(self, first: _Tenancy, waited_s: float) -> None:
        """Start one more copy of ``first``'s child where it fits now (idle children may be stopped
        for it, busy ones never), on GPUs other copies do not use where possible."""
        base = first.sidecar.spec
        key = base.config_key
        try:
            taken = {t.sidecar.key for t in self._copies(key)}
            number = next(n for n in range(2, len(taken) + 3) if f"{key}.{n}" not in taken)
            spec = dataclasses.replace(base, key=f"{key}.{number}", copy_of=key, extra_argv=())
            try:
                room = await self._make_room(spec, trio.current_time())  # now or never: no waiting
            except (CapacityError, InsufficientMemoryError) as error:
                log.info("no copy of %s: %s", base.model, error)
                return
            if isinstance(room, _Tenancy):
                return
            log.info("%s: a request waited %.1f s for a slot: starting copy %d", base.model, waited_s, number)
            self._spawn(spec, room, first.queue)
        finally:
            self._adding.discard(key)

    # -- crash loops ---------------------------------------------------------

    def _refuse_while_backing_off(self, spec: SidecarSpec) -> None:
        now = trio.current_time()
        backoff = self._crashes.backoff(spec.key, now)
        if backoff is None:
            return
        window = self._crashes.rule.window_s
        raise BackoffError(
            f"{spec.model} keeps failing ({backoff.failures} times in the last {window:g} s); not "
            f"restarting it for {backoff.until - now:.1f} s more. Last failure: {backoff.last.reason}",
            backoff.last.stderr_tail,
            retry_after_s=max(1, math.ceil(backoff.until - now)),
        )

    def backoffs(self) -> list[dict[str, Any]]:
        """Keys that may not be respawned yet, with why (for /api/sidecars)."""
        now = trio.current_time()
        return [
            {
                "key": key,
                "failures": b.failures,
                "retry_in_s": round(b.until - now, 1),
                "last_error": b.last.reason,
                "stderr_tail": list(b.last.stderr_tail),
            }
            for key, b in self._crashes.backoffs(now).items()
        ]

    # -- spawning ------------------------------------------------------------

    def _spawn(self, spec: SidecarSpec, placed: Choice, line: deque[object] | None = None) -> _Tenancy:
        """Start a child of ``spec`` where ``placed`` says (a copy joins the first one's ``line``)."""
        assert self._nursery is not None, "Pool.run() is not running"
        restarts = self._spawns.get(spec.key, 0)
        self._spawns[spec.key] = restarts + 1
        need = self.memory.need(spec, placed.layout)
        knows = partial(self.routes.binary_knows, spec.binary)
        keeps_kv = self.kv is not None and not spec.copy_of  # one KV cache per key: the first copy's
        extra = placed.layout.argv() + (self.kv.start_argv(spec, knows) if self.kv and keeps_kv else ())
        extra += self.memory.start_argv(spec, knows)
        spec = dataclasses.replace(spec, extra_argv=extra)  # this start only, not the key
        sidecar = self._make_sidecar(spec, restarts, self._on_sidecar_event)
        tenancy = self._live[spec.key] = _Tenancy(sidecar, need, placed, deque() if line is None else line)
        if spec.copy_of:
            self._live_copies += 1
            tenancy.idle_ttl_s = policy.shortest_ttl(spec.idle_ttl_s, self._pool_settings.replica_idle_ttl_s)
        self._publish(sidecar, Spawned, restarts=restarts)
        self._nursery.start_soon(self._own, tenancy)
        return tenancy

    def _real_sidecar(
        self, spec: SidecarSpec, restarts: int, on_event: Callable[[SidecarEvent], None]
    ) -> Sidecar:
        return Sidecar(
            spec,
            env=child_environment(os.environ, spec.binary.env),
            settings=self._settings,
            allocate_port=self._allocate_port,
            restarts=restarts,
            on_event=on_event,
            prepare=None if self.kv is None or spec.copy_of else self.kv.restore,
        )

    async def _own(self, tenancy: _Tenancy) -> None:
        sidecar = tenancy.sidecar
        try:
            await sidecar.run()
        except SpawnError as error:
            log.error("%s could not start: %s", sidecar.label, error.reason)
        except Exception:
            # The supervisor boundary: a bug in one child's supervision must not
            # take down the daemon and every other child with it.
            log.exception("%s supervision failed", sidecar.label)
        finally:
            self._gone(tenancy)

    def _allocate_port(self) -> int:
        in_use = [t.sidecar.port for t in self._live.values() if t.sidecar.port is not None]
        for port in policy.port_candidates(self._settings.port_range, in_use, self._port_cursor):
            self._port_cursor = port + 1
            if port_is_free(port):
                return port
        first, last = self._settings.port_range
        raise SpawnError(f"no free port in llama_server.port_range [{first}, {last}]")

    # -- stopping ------------------------------------------------------------

    def _stop_soon(self, tenancy: _Tenancy, reason: StopReason, detail: str) -> None:
        """Take the child out of service now; stop it once its requests are done (bounded)."""
        assert self._nursery is not None
        sidecar = tenancy.sidecar
        if sidecar.mark_stopping(reason, detail):
            log.info("%s stopping (%s), %d request(s) in flight", sidecar.label, detail, tenancy.in_flight)
            self._count_eviction(sidecar, reason, detail)
        self._nursery.start_soon(self._drain_then_stop, tenancy, reason, detail)

    async def _drain_then_stop(self, tenancy: _Tenancy, reason: StopReason, detail: str) -> None:
        with trio.move_on_after(self._pool_settings.drain_timeout_s):
            await tenancy.idle.wait()
        sidecar = tenancy.sidecar
        # A ready child keeps what it has processed: its slots are saved while it still runs.
        running = sidecar.ready_at is not None and sidecar.outcome is None
        if self.kv is not None and running and not sidecar.spec.copy_of:
            await self.kv.save(sidecar)
        await sidecar.stop(reason, detail)

    def _count_eviction(self, sidecar: SidecarLike, reason: StopReason, detail: str) -> None:
        if reason is not StopReason.SHUTDOWN:
            self.evictions += 1
        self._publish(sidecar, Evicted, reason=reason, detail=detail)

    async def evict(
        self, key: str, reason: StopReason = StopReason.MANUAL, detail: str = "stopped on request"
    ) -> bool:
        """Stop one child after its in-flight requests (bounded); False if there is none."""
        tenancy = self._live.get(key)
        if tenancy is None:
            return False
        self._stop_soon(tenancy, reason, detail)
        await tenancy.sidecar.wait_exited()
        return True

    async def restart(self, key: str) -> SidecarLike | None:
        """Replace one child with a fresh one of the same spec; None if there is none."""
        tenancy = self._live.get(key)
        if tenancy is None:
            return None
        await self.evict(key, StopReason.RESTART, "restarted on request")
        spec = tenancy.sidecar.spec
        if spec.copy_of:  # a copy comes back as the pool sees fit: whichever copy has room serves
            spec = dataclasses.replace(spec, key=spec.copy_of, copy_of="")
        return await self.preload(spec)

    def apply(self, routes: RouteTable) -> tuple[list[str], list[str]]:
        """Serve ``routes`` from now on: children they still need keep running, the others drain and stop.

        Returns the keys kept and the keys stopping.
        """
        self.routes = routes
        self._crashes.rule = routes.config.pool.crash_loop
        if self.kv is not None:
            self.kv.settings = routes.config.kv_cache
            self.kv.forget_stale(routes)
        wanted = self._configured_keys()
        kept, stopping = [], []
        for tenancy in list(self._live.values()):
            if tenancy.sidecar.spec.config_key in wanted:
                kept.append(tenancy.sidecar.key)
            else:
                self._stop_soon(tenancy, StopReason.RELOAD, "no longer in the configuration, or changed")
                stopping.append(tenancy.sidecar.key)
        self.publish(Reloaded(ts=time.time(), kept=tuple(kept), stopping=tuple(stopping)))
        self._notify()
        return kept, stopping

    def close_feeds(self) -> None:
        """End every events and log subscription (the daemon is going away)."""
        self.events.close()
        for tenancy in self._live.values():
            tenancy.sidecar.stderr.live.close()

    async def stop_all(self) -> None:
        """Stop every child, each after its in-flight requests (bounded), in parallel."""
        tenancies = list(self._live.values())
        for tenancy in tenancies:
            self._stop_soon(tenancy, StopReason.SHUTDOWN, "the daemon is shutting down")
        for tenancy in tenancies:
            await tenancy.sidecar.wait_exited()

    async def _expire_idle(self) -> None:
        while True:
            occupants = [t.occupant() for t in self._live.values()]
            for key in policy.expired(occupants, trio.current_time()):
                tenancy = self._live[key]
                self._stop_soon(tenancy, StopReason.TTL, f"idle for {tenancy.idle_ttl_s:g} s (its idle TTL)")
            next_expiry = policy.next_expiry(t.occupant() for t in self._live.values())
            self._expiry_alarm = math.inf if next_expiry is None else next_expiry
            with trio.move_on_at(self._expiry_alarm):
                await self._expiry_review.wait()

    # -- what sidecars tell us -------------------------------------------------

    def _on_sidecar_event(self, event: SidecarEvent) -> None:
        tenancy = self._live.get(event.key)
        sidecar = None if tenancy is None else tenancy.sidecar
        if isinstance(event, Starting) and self._guard is not None:
            self._guard.register(event.pid)
        elif isinstance(event, Ready) and tenancy is not None:
            self._learn(tenancy)
        elif isinstance(event, Unhealthy) and sidecar is not None:
            # The sidecar kills itself; for the pool that is an eviction.
            self._count_eviction(sidecar, StopReason.UNHEALTHY, event.detail)
        elif isinstance(event, Exited) and tenancy is not None:
            if self._guard is not None and tenancy.sidecar.pid is not None:
                self._guard.unregister(tenancy.sidecar.pid)
            self._gone(tenancy)
        if sidecar is not None:
            self._emit(event, sidecar)
        self._notify()

    def _on_kv_event(self, event: SidecarEvent) -> None:
        tenancy = self._live.get(event.key)
        self._emit(event, None if tenancy is None else tenancy.sidecar)

    def _learn(self, tenancy: _Tenancy) -> None:
        sidecar = tenancy.sidecar
        if self.memory.record(sidecar.spec, sidecar.measured, sidecar.pid):
            tenancy.need = self.memory.need(sidecar.spec, tenancy.placed.layout)
            assert self._nursery is not None
            self._nursery.start_soon(self.memory.save)

    def _gone(self, tenancy: _Tenancy) -> None:
        """A sidecar exited: forget it, and remember a failure for the crash-loop rule."""
        key = tenancy.sidecar.key
        if self._live.get(key) is not tenancy:
            return  # already done (the Exited event and the end of its task both come here)
        del self._live[key]
        self._live_copies -= bool(tenancy.sidecar.spec.copy_of)
        outcome = tenancy.sidecar.outcome
        failure = None if outcome is None else outcome.failure()
        if failure is not None:
            now = trio.current_time()
            exit_code = None if outcome is None else outcome.exit_code
            self._crashes.record(key, Failure(now, failure.reason, failure.stderr_tail, exit_code))
            backoff = self._crashes.backoff(key, now)
            if backoff is not None:
                for_s = backoff.until - now
                self._publish(tenancy.sidecar, BackingOff, failures=backoff.failures, for_s=for_s)
        self._forget()
        self._notify()

    def _forget(self) -> None:
        """Keep per-key history bounded: drop keys that are not live, configured, or backing off."""
        self._crashes.forget_quiet(trio.current_time())
        keep = self._configured_keys() | set(self._live)
        for key in [k for k in self._spawns if k not in keep and k not in self._crashes]:
            del self._spawns[key]

    def _configured_keys(self) -> set[str]:
        return {self.routes.key_of(route.name) for route in self.routes.routes()}

    def _publish(self, sidecar: SidecarLike, event: type[SidecarEvent], **details: Any) -> None:
        if self.observers or self.events:
            self._emit(event(key=sidecar.key, model=sidecar.spec.model, ts=time.time(), **details), sidecar)

    def _emit(self, event: PoolEvent, sidecar: SidecarLike | None) -> None:
        for observe in self.observers:
            observe(event)
        if self.events:  # the sidecar is described only for listeners (twice per request otherwise)
            self.events.publish(Published(event, None if sidecar is None else self.describe_one(sidecar)))

    def publish(self, event: PoolEvent) -> None:
        """Send an event that concerns no one sidecar (a stats sample, a refusal) on."""
        self._emit(event, None)

    def _notify(self, *, idle_until: float = -math.inf) -> None:
        """Wake whoever waits for a change in the pool.

        ``idle_until``: the change is only a lease's end, whose child expires no sooner
        than that; the idle-expiry task is left asleep if its alarm rings first anyway
        (under load, one wakeup fewer per request).
        """
        self._changed.set()
        self._changed = trio.Event()
        if idle_until < self._expiry_alarm:
            self._expiry_review.set()
            self._expiry_review = trio.Event()

    async def wait_changed(self) -> None:
        """Until anything in the pool changes (a child's state, a lease, a waiter)."""
        await self._changed.wait()

    def summary_line(self) -> str:
        """The pool in one line, e.g. for the service manager's status."""
        states = Counter(t.sidecar.state.value for t in self._live.values())
        in_flight = sum(t.in_flight for t in self._live.values())
        waiting = sum(t.waiting for t in self._live.values())
        children = ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "none running"
        return f"{len(self._live)} sidecar(s): {children}; {in_flight} in flight, {waiting} waiting"

    # -- views ---------------------------------------------------------------

    def _find(self, key: str) -> _Tenancy | None:
        """The live child ``key`` names: that child, or the first copy of that configuration."""
        return self._live.get(key) or next(iter(self._copies(key)), None)

    def get(self, key: str) -> SidecarLike | None:
        tenancy = self._find(key)
        return None if tenancy is None else tenancy.sidecar

    def is_ready(self, key: str) -> bool:
        """Whether a request for ``key`` finds a child ready now (no load to wait for)."""
        return any(t.sidecar.state is State.READY for t in self._copies(key))

    def last_failure(self, key: str) -> Failure | None:
        """Why ``key``'s last child failed, while that is remembered (see CrashHistory)."""
        return self._crashes.last(key)

    def load_soon(self, spec: SidecarSpec) -> None:
        """Start ``spec``'s child without waiting for it (router-mode /models/load): its progress shows
        in its state, a failure in its outcome and the crash-loop history."""
        assert self._nursery is not None, "Pool.run() is not running"
        self._nursery.start_soon(self._load_quietly, spec)

    async def _load_quietly(self, spec: SidecarSpec) -> None:
        try:
            await self.preload(spec)
        except OrchestratorError as error:  # nobody waits for it: the outcome and the log say it
            log.warning("loading %s failed: %s", spec.model, error)

    def sidecars(self) -> list[SidecarLike]:
        return [tenancy.sidecar for tenancy in self._live.values()]

    def keep_alive(self, key: str, seconds: float) -> None:
        """From now on, stop the live child ``key`` once idle this long (Ollama's keep_alive): 0 as soon
        as it is idle, inf never for idleness (room may still evict it)."""
        for tenancy in self._copies(key):
            tenancy.idle_ttl_s = 0.0 if math.isinf(seconds) else max(seconds, KEEP_ALIVE_NOW_S)
            if not tenancy.in_flight:
                ttl = tenancy.idle_ttl_s
                self._notify(idle_until=tenancy.last_used + ttl if ttl else math.inf)

    def expires_at(self, key: str) -> float | None:
        """When the live child ``key`` will be stopped for idleness if nothing uses it (wall clock)."""
        tenancy = self._find(key)
        if tenancy is None or not tenancy.idle_ttl_s:
            return None
        return time.time() + tenancy.last_used + tenancy.idle_ttl_s - trio.current_time()

    def room_for(self, spec: SidecarSpec) -> admission.Decision:
        """Whether a child of ``spec`` could start now (see admission); nothing is done about it."""
        return self._place(spec).decision

    def _place(self, spec: SidecarSpec) -> Choice:
        """Where a child of ``spec`` would go now (see placement), and whether it fits there."""
        knows = partial(self.routes.binary_knows, spec.binary)
        # A copy goes on other GPUs than its siblings where it can: each its own memory bandwidth.
        siblings = self._copies(spec.config_key) if spec.copy_of else []
        avoid = {d for t in siblings for d in self.memory.devices_of(t.sidecar.spec, t.placed.layout)}
        residents = self._residents()
        return self.memory.place(spec, knows, residents, self._pool_settings.max_sidecars, avoid)

    def leases(self, key: str) -> tuple[int, int]:
        """(requests in flight, requests waiting) for the live sidecar ``key``; (0, 0) if none."""
        tenancy = self._live.get(key)
        return (0, 0) if tenancy is None else (tenancy.in_flight, tenancy.waiting)

    def describe_one(self, sidecar: SidecarLike) -> dict[str, Any]:
        tenancy = self._live.get(sidecar.key)
        leases: dict[str, Any] = {"in_flight": 0, "waiting": 0, "last_used": None}
        if tenancy is not None and tenancy.sidecar is sidecar:
            idle_for = trio.current_time() - tenancy.last_used
            leases = {
                "in_flight": tenancy.in_flight,
                "waiting": tenancy.waiting,
                "last_used": time.time() - idle_for,
            }
        memory = (
            None
            if tenancy is None
            else {
                **tenancy.need.to_json(),
                "counted_mib": self.counted_mib(sidecar.key),
                "devices": self.memory.devices_of(sidecar.spec, tenancy.placed.layout),
                "placement": tenancy.placed.why or None,
            }
        )
        kv_cache = None if self.kv is None else self.kv.describe(sidecar.key)
        return {
            **sidecar.describe(),
            **leases,
            "memory": memory,
            "agents": self.routes.users(sidecar.spec.config_key),
            "copy_of": sidecar.spec.copy_of or None,
            "kv_cache": kv_cache,
        }

    def counted_bytes(self, key: str) -> dict[str, int] | None:
        """What a live child counts for against the budgets now, per device."""
        tenancy = self._live.get(key)
        return None if tenancy is None else self.memory.current(key, tenancy.need)

    def counted_mib(self, key: str) -> dict[str, int] | None:
        counted = self.counted_bytes(key)
        return None if counted is None else {d: round(v / admission.MiB) for d, v in counted.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [self.describe_one(tenancy.sidecar) for tenancy in self._live.values()]
