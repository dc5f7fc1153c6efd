"""The pool: the registry of sidecars, leases, spawn coalescing, eviction, idle TTL.

Every sidecar runs in the pool's nursery, never in the request that caused it,
so a client that goes away mid-spawn does not kill the child. All bookkeeping
is synchronous between checkpoints, so trio's scheduling makes "check state,
then act" atomic: a request that leases a child and an eviction that picks it
cannot interleave.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from orchestrator import policy, procgroup
from orchestrator.config import LlamaServerSettings, PoolSettings
from orchestrator.errors import BackoffError, CapacityError, OverloadedError, SpawnError
from orchestrator.policy import Occupant, State, StopReason
from orchestrator.procgroup import child_environment
from orchestrator.routing import CHILD_HOST, RouteTable, SidecarSpec
from orchestrator.supervisor.fanout import FanOut
from orchestrator.supervisor.sidecar import Sidecar

log = logging.getLogger("orchestrator.supervisor.pool")


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


class Pool:
    """Owns every sidecar; hands out leases on ready ones."""

    def __init__(self, routes: RouteTable, guard: ChildGuard | None = None) -> None:
        self.routes = routes
        self._guard = guard
        self.evictions = 0
        self.events: FanOut[dict[str, Any]] = FanOut()
        self._sidecars: dict[str, Sidecar] = {}
        self._spawns: dict[str, int] = {}
        self._failures: dict[str, list[float]] = {}  # trio clock times of each key's failures
        self._last_failure: dict[str, SpawnError] = {}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
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
    async def lease(self, spec: SidecarSpec) -> AsyncIterator[Sidecar]:
        """A ready sidecar for ``spec``, counted in flight until the block ends."""
        sidecar = await self._acquire(spec)
        self._publish(sidecar, "request", {"phase": "started", "in_flight": sidecar.in_flight})
        try:
            yield sidecar
        finally:
            sidecar.release()
            self._publish(sidecar, "request", {"phase": "finished", "in_flight": sidecar.in_flight})
            self._notify()

    async def preload(self, spec: SidecarSpec) -> Sidecar:
        """Make sure a child for ``spec`` is running (spawning it if needed), without a request."""
        async with self.lease(spec) as sidecar:
            return sidecar

    async def _acquire(self, spec: SidecarSpec) -> Sidecar:
        deadline = trio.current_time() + self._pool_settings.capacity_wait_s
        while True:
            sidecar = self._sidecars.get(spec.key)
            if sidecar is None:
                self._refuse_while_backing_off(spec)
                sidecar = await self._make_room(spec, deadline)
                if sidecar is None:
                    sidecar = self._spawn(spec)
            await sidecar.wait_settled()
            if sidecar.state is State.READY and sidecar.in_flight < self._max_in_flight(sidecar):
                sidecar.acquire()
                return sidecar
            if sidecar.state is State.READY:
                await self._queue_for(sidecar, deadline)
                continue
            if sidecar.failure is not None and sidecar.stop_reason is None:
                raise sidecar.failure  # it could not start
            # It is being stopped (evicted, unhealthy, or it died): wait, then respawn.
            await sidecar.wait_exited()

    def _max_in_flight(self, sidecar: Sidecar) -> int:
        return self._pool_settings.max_in_flight or sidecar.slots

    async def _queue_for(self, sidecar: Sidecar, deadline: float) -> None:
        """Wait (bounded) for a busy child to finish a request; 429 when its queue is full."""
        if sidecar.waiting >= self._pool_settings.max_queue:
            raise OverloadedError(
                f"{sidecar.spec.model} is serving {sidecar.in_flight} requests (its limit) and "
                f"{sidecar.waiting} more are waiting (pool.max_queue); try again shortly",
                retry_after_s=1,
            )
        sidecar.waiting += 1  # a child with waiters is not idle: never evicted under them
        try:
            with trio.move_on_at(deadline):
                await self._changed.wait()
        finally:
            sidecar.waiting -= 1
        if trio.current_time() >= deadline:
            wait = self._pool_settings.capacity_wait_s
            raise CapacityError(
                f"{sidecar.spec.model} stayed busy for {wait:g} s (pool.capacity_wait_s)", retry_after_s=1
            )

    async def _make_room(self, spec: SidecarSpec, deadline: float) -> Sidecar | None:
        """Wait until the pool has room for one more child, evicting the LRU idle one.

        Returns a sidecar for ``spec`` if another request spawned one meanwhile.
        """
        while len(self._sidecars) >= self._pool_settings.max_sidecars:
            victim_key = policy.choose_victim(self._occupants())
            if victim_key is not None:
                victim = self._sidecars[victim_key]
                self._stop_soon(victim, StopReason.LRU, "least recently used, and the pool is full")
                await victim.wait_exited()
            else:
                with trio.move_on_at(deadline):
                    await self._changed.wait()
                if trio.current_time() >= deadline:
                    wait = self._pool_settings.capacity_wait_s
                    raise CapacityError(
                        f"all {self._pool_settings.max_sidecars} sidecars are busy or loading; "
                        f"waited {wait:g} s (pool.capacity_wait_s) for one to become idle",
                        retry_after_s=max(1, math.ceil(wait / 4)),
                    )
            existing = self._sidecars.get(spec.key)
            if existing is not None:
                return existing
        return None

    def _refuse_while_backing_off(self, spec: SidecarSpec) -> None:
        until = policy.backoff_until(self._failures.get(spec.key, []))
        now = trio.current_time()
        if until is None or now >= until:
            return
        last = self._last_failure[spec.key]
        window = policy.CrashLoopRule().window_s
        failures = len([t for t in self._failures[spec.key] if t >= now - window])
        raise BackoffError(
            f"{spec.model} keeps failing ({failures} times in the last {window:g} s); not restarting it "
            f"for {until - now:.1f} s more. Last failure: {last.reason}",
            last.stderr_tail,
            retry_after_s=max(1, math.ceil(until - now)),
        )

    def _record_failure(self, sidecar: Sidecar) -> None:
        """A child that could not start, or that exited without being asked to."""
        if sidecar.stop_reason is not None:
            return  # stopped on purpose (or for failing its health checks): not a crash
        if sidecar.failure is not None:
            failure = sidecar.failure
        elif sidecar.exit_code is not None:
            how = procgroup.describe_exit(sidecar.exit_code)
            failure = SpawnError(f"llama-server exited unexpectedly ({how})", sidecar.stderr.tail(20))
        else:
            return
        window = policy.CrashLoopRule().window_s
        now = trio.current_time()
        history = [t for t in self._failures.get(sidecar.key, []) if t >= now - window]
        self._failures[sidecar.key] = [*history, now]
        self._last_failure[sidecar.key] = failure

    def backoffs(self) -> list[dict[str, Any]]:
        """Keys that may not be respawned yet, with why (for /api/sidecars)."""
        now = trio.current_time()
        result = []
        for key, failures in self._failures.items():
            until = policy.backoff_until(failures)
            if until is not None and until > now:
                last = self._last_failure[key]
                result.append({"key": key, "failures": len(failures), "retry_in_s": round(until - now, 1),
                               "last_error": last.reason, "stderr_tail": list(last.stderr_tail)})  # fmt: skip
        return result

    def _spawn(self, spec: SidecarSpec) -> Sidecar:
        assert self._nursery is not None, "Pool.run() is not running"
        spawns = self._spawns[spec.key] = self._spawns.get(spec.key, 0) + 1
        sidecar = Sidecar(
            spec,
            env=child_environment(os.environ, spec.binary.env),
            settings=self._settings,
            allocate_port=self._allocate_port,
            restarts=spawns - 1,
            on_event=self._on_sidecar_event,
        )
        self._sidecars[spec.key] = sidecar
        self._publish(sidecar, "spawn", {"restarts": spawns - 1})
        self._nursery.start_soon(self._own, sidecar)
        return sidecar

    async def _own(self, sidecar: Sidecar) -> None:
        try:
            await sidecar.run()
        except SpawnError as error:
            log.error("%s could not start: %s", sidecar.label, error.reason)
        except Exception:
            # The supervisor boundary: a bug in one child's supervision must not
            # take down the daemon and every other child with it.
            log.exception("%s supervision failed", sidecar.label)
        finally:
            self._record_failure(sidecar)
            if self._sidecars.get(sidecar.key) is sidecar:
                del self._sidecars[sidecar.key]
            self._notify()

    def _allocate_port(self) -> int:
        in_use = [s.port for s in self._sidecars.values() if s.port is not None]
        for port in policy.port_candidates(self._settings.port_range, in_use, self._port_cursor):
            self._port_cursor = port + 1
            if port_is_free(port):
                return port
        first, last = self._settings.port_range
        raise SpawnError(f"no free port in llama_server.port_range [{first}, {last}]")

    # -- stopping ------------------------------------------------------------

    def _stop_soon(self, sidecar: Sidecar, reason: StopReason, detail: str) -> None:
        assert self._nursery is not None
        if sidecar.mark_stopping(reason, detail):
            self._count_eviction(sidecar, reason, detail)
        self._nursery.start_soon(sidecar.stop, reason, detail, self._pool_settings.drain_timeout_s)

    def _count_eviction(self, sidecar: Sidecar, reason: StopReason, detail: str) -> None:
        if reason is not StopReason.SHUTDOWN:
            self.evictions += 1
        self._publish(sidecar, "evicted", {"reason": reason.value, "detail": detail})

    async def evict(
        self, key: str, reason: StopReason = StopReason.MANUAL, detail: str = "stopped on request"
    ) -> bool:
        """Stop one child after its in-flight requests (bounded); False if there is none."""
        sidecar = self._sidecars.get(key)
        if sidecar is None:
            return False
        self._stop_soon(sidecar, reason, detail)
        await sidecar.wait_exited()
        return True

    async def restart(self, key: str) -> Sidecar | None:
        """Replace one child with a fresh one of the same spec; None if there is none."""
        sidecar = self._sidecars.get(key)
        if sidecar is None:
            return None
        await self.evict(key, StopReason.RESTART, "restarted on request")
        return await self.preload(sidecar.spec)

    def apply(self, routes: RouteTable) -> tuple[list[str], list[str]]:
        """Serve ``routes`` from now on: children they still need keep running, the others drain and stop.

        Returns the keys kept and the keys stopping.
        """
        self.routes = routes
        wanted = {routes.key_of(route.name) for route in routes.routes()}
        kept, stopping = [], []
        for sidecar in list(self._sidecars.values()):
            if sidecar.key in wanted:
                kept.append(sidecar.key)
            else:
                self._stop_soon(sidecar, StopReason.RELOAD, "no longer in the configuration, or changed")
                stopping.append(sidecar.key)
        self._notify()
        return kept, stopping

    def close_feeds(self) -> None:
        """End every events and log subscription (the daemon is going away)."""
        self.events.close()
        for sidecar in self._sidecars.values():
            sidecar.stderr.live.close()

    async def stop_all(self) -> None:
        """Stop every child, each after its in-flight requests (bounded), in parallel."""
        sidecars = list(self._sidecars.values())
        for sidecar in sidecars:
            self._stop_soon(sidecar, StopReason.SHUTDOWN, "the daemon is shutting down")
        for sidecar in sidecars:
            await sidecar.wait_exited()

    async def _expire_idle(self) -> None:
        while True:
            for key in policy.expired(self._occupants(), trio.current_time()):
                sidecar = self._sidecars[key]
                self._stop_soon(
                    sidecar, StopReason.TTL, f"idle for {sidecar.spec.idle_ttl_s:g} s (its idle TTL)"
                )
            next_expiry = policy.next_expiry(self._occupants())
            with trio.move_on_at(math.inf if next_expiry is None else next_expiry):
                await self._changed.wait()

    # -- views ---------------------------------------------------------------

    def _on_sidecar_event(self, sidecar: Sidecar, kind: str, details: dict[str, Any]) -> None:
        if self._guard is not None and kind == "starting":
            self._guard.register(details["pid"])
        if self._guard is not None and kind == "exited" and sidecar.pid is not None:
            self._guard.unregister(sidecar.pid)
        if kind == "unhealthy":  # the sidecar kills itself; for the pool that is an eviction
            self._count_eviction(sidecar, StopReason.UNHEALTHY, sidecar.stop_detail)
        self._publish(sidecar, kind, details)
        self._notify()

    def _publish(self, sidecar: Sidecar, kind: str, details: dict[str, Any]) -> None:
        if not self.events:
            return  # nobody listens: skip describing the sidecar (twice per request otherwise)
        event = {
            "type": kind,
            "key": sidecar.key,
            "model": sidecar.spec.model,
            "ts": time.time(),
            **details,
            "sidecar": self.describe_one(sidecar),
        }
        self.events.publish(event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _occupants(self) -> list[Occupant]:
        return [
            Occupant(s.key, s.state, s.in_flight, s.last_used, s.waiting, s.spec.idle_ttl_s)
            for s in self._sidecars.values()
        ]

    def get(self, key: str) -> Sidecar | None:
        return self._sidecars.get(key)

    def sidecars(self) -> list[Sidecar]:
        return list(self._sidecars.values())

    def describe_one(self, sidecar: Sidecar) -> dict[str, Any]:
        return {**sidecar.describe(), "agents": self.routes.users(sidecar.key)}

    def describe(self) -> list[dict[str, Any]]:
        return [self.describe_one(sidecar) for sidecar in self._sidecars.values()]
