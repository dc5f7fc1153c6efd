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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from orchestrator import policy
from orchestrator.config import LlamaServerSettings, PoolSettings
from orchestrator.errors import CapacityError, SpawnError
from orchestrator.policy import Occupant, State
from orchestrator.procgroup import child_environment
from orchestrator.routing import CHILD_HOST, RouteTable, SidecarSpec
from orchestrator.sidecar import Sidecar

log = logging.getLogger("orchestrator.pool")


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` on the children's loopback address right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((CHILD_HOST, port))
        except OSError:
            return False  # in use by someone else
    return True


class Pool:
    """Owns every sidecar; hands out leases on ready ones."""

    def __init__(self, routes: RouteTable, http: httpx.AsyncClient) -> None:
        self.routes = routes
        self.evictions = 0
        self._http = http
        self._sidecars: dict[str, Sidecar] = {}
        self._spawns: dict[str, int] = {}
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
        try:
            yield sidecar
        finally:
            sidecar.release()
            self._notify()

    async def _acquire(self, spec: SidecarSpec) -> Sidecar:
        deadline = trio.current_time() + self._pool_settings.capacity_wait_s
        while True:
            sidecar = self._sidecars.get(spec.key)
            if sidecar is None:
                sidecar = await self._make_room(spec, deadline)
                if sidecar is None:
                    sidecar = self._spawn(spec)
            await sidecar.wait_settled()
            if sidecar.state is State.READY:
                sidecar.acquire()
                return sidecar
            if sidecar.failure is not None:
                raise sidecar.failure
            # It is being stopped (evicted, unhealthy, or it died): wait, then respawn.
            await sidecar.wait_exited()

    async def _make_room(self, spec: SidecarSpec, deadline: float) -> Sidecar | None:
        """Wait until the pool has room for one more child, evicting the LRU idle one.

        Returns a sidecar for ``spec`` if another request spawned one meanwhile.
        """
        while len(self._sidecars) >= self._pool_settings.max_sidecars:
            victim_key = policy.choose_victim(self._occupants())
            if victim_key is not None:
                victim = self._sidecars[victim_key]
                self._stop_soon(victim, "evicted: least recently used, pool full")
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

    def _spawn(self, spec: SidecarSpec) -> Sidecar:
        assert self._nursery is not None, "Pool.run() is not running"
        spawns = self._spawns[spec.key] = self._spawns.get(spec.key, 0) + 1
        sidecar = Sidecar(
            spec,
            env=child_environment(os.environ, spec.binary.env),
            settings=self._settings,
            http=self._http,
            allocate_port=self._allocate_port,
            restarts=spawns - 1,
            on_change=self._notify,
        )
        self._sidecars[spec.key] = sidecar
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

    def _stop_soon(self, sidecar: Sidecar, reason: str) -> None:
        assert self._nursery is not None
        if sidecar.mark_stopping(reason):
            self.evictions += 1
        self._nursery.start_soon(sidecar.stop, reason, self._pool_settings.drain_timeout_s)

    async def evict(self, key: str, reason: str = "evicted: by request") -> bool:
        """Stop one child after its in-flight requests (bounded); False if there is none."""
        sidecar = self._sidecars.get(key)
        if sidecar is None:
            return False
        self._stop_soon(sidecar, reason)
        await sidecar.wait_exited()
        return True

    async def stop_all(self, reason: str) -> None:
        """Stop every child, each after its in-flight requests (bounded), in parallel."""
        sidecars = list(self._sidecars.values())
        for sidecar in sidecars:
            self._stop_soon(sidecar, reason)
        for sidecar in sidecars:
            await sidecar.wait_exited()

    async def _expire_idle(self) -> None:
        while True:
            for key in policy.expired(self._occupants(), trio.current_time()):
                sidecar = self._sidecars[key]
                self._stop_soon(sidecar, f"evicted: idle for {sidecar.spec.idle_ttl_s:g} s (idle TTL)")
            next_expiry = policy.next_expiry(self._occupants())
            with trio.move_on_at(math.inf if next_expiry is None else next_expiry):
                await self._changed.wait()

    # -- views ---------------------------------------------------------------

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

    def describe(self) -> list[dict[str, Any]]:
        return [
            {**sidecar.describe(), "agents": self.routes.users(sidecar.key)}
            for sidecar in self._sidecars.values()
        ]
