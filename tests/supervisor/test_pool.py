"""The pool on the fake llama-server: leases, idle TTL, and eviction racing requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from orchestrator.config import Config
from orchestrator.discovery import LlamaServerBinary
from orchestrator.errors import BackoffError, SpawnError
from orchestrator.policy import State, StopReason
from orchestrator.supervisor.pool import Pool
from tests.conftest import make_config, pid_alive, routes_for, wait_until


@asynccontextmanager
async def running_pool(config: Config, binary: LlamaServerBinary) -> AsyncIterator[Pool]:
    async with trio.open_nursery() as nursery:
        pool = Pool(routes_for(config, binary))
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


async def test_lease_counts_in_flight_and_marks_last_use(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with running_pool(config, fake_binary) as pool:
        spec = pool.routes.resolve("m")
        async with pool.lease(spec) as first, pool.lease(spec) as second:
            assert first is second
            assert first.in_flight == 2
            used = first.last_used
        assert first.in_flight == 0
        assert first.last_used >= used


async def test_idle_ttl_stops_idle_children_but_never_a_busy_one(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, pool={"idle_ttl_s": 0.3})
    async with running_pool(config, fake_binary) as pool:
        spec = pool.routes.resolve("m")
        async with pool.lease(spec) as sidecar:
            held_since = trio.current_time()
            await wait_until(lambda: trio.current_time() - held_since > 0.9)  # three TTLs, busy all along
            assert sidecar.state is State.READY
        released = trio.current_time()
        await sidecar.wait_exited()
        assert trio.current_time() - released >= 0.3
        assert sidecar.stop_reason is StopReason.TTL and "idle" in sidecar.stop_detail
        assert pool.sidecars() == [] and pool.evictions == 1
        assert sidecar.pid is not None and not pid_alive(sidecar.pid)


async def test_request_racing_the_eviction_of_its_child_waits_for_a_fresh_one(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(
        tmp_path,
        {"a": {"path": fake_model("a")}, "b": {"path": fake_model("b", load_s=0.3)}},
        pool={"max_sidecars": 1},
    )
    async with running_pool(config, fake_binary) as pool:
        spec_a, spec_b = pool.routes.resolve("a"), pool.routes.resolve("b")
        async with pool.lease(spec_a) as first_a:
            pass
        served: list[str] = []

        async def use(spec_name: str) -> None:
            async with pool.lease(pool.routes.resolve(spec_name)) as sidecar:
                assert sidecar.state is State.READY
                served.append(sidecar.spec.model)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(use, "b")  # evicts a
            await wait_until(lambda: first_a.state is not State.READY)
            nursery.start_soon(use, "a")  # a is stopping: must wait for a fresh one
        assert sorted(served) == ["a", "b"]
        [final] = pool.sidecars()
        assert final.spec == spec_a and final is not first_a and final.restarts == 1
        assert spec_b.key not in [s.key for s in pool.sidecars()]


async def test_a_crash_looping_model_backs_off_and_fails_fast_with_its_stderr(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(exit_during_load=9)}})
    async with running_pool(config, fake_binary) as pool:
        spec = pool.routes.resolve("m")
        for _ in range(3):  # the first failures are tried again at once
            with pytest.raises(SpawnError) as failed:
                await pool.preload(spec)
            assert not isinstance(failed.value, BackoffError)
        began = trio.current_time()
        with pytest.raises(BackoffError) as backing_off:
            await pool.preload(spec)
        assert trio.current_time() - began < 0.1  # fast: nothing was spawned
        assert "keeps failing (3 times" in str(backing_off.value)
        assert "exit code 9" in str(backing_off.value)
        assert "fake: failed to load model" in backing_off.value.stderr_tail
        assert backing_off.value.retry_after_s >= 1
        assert pool._spawns[spec.key] == 3  # no more attempts than the rule allows
        [entry] = pool.backoffs()
        assert entry["key"] == spec.key and entry["failures"] == 3


async def test_evicting_a_loading_child_hands_its_waiter_a_fresh_one_and_is_not_a_crash(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(load_s=0.5)}})
    async with running_pool(config, fake_binary) as pool:
        spec = pool.routes.resolve("m")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.preload, spec)
            await wait_until(lambda: (s := pool.get(spec.key)) is not None and s.pid is not None)
            loading = pool.get(spec.key)
            assert loading is not None and loading.state is State.STARTING
            assert await pool.evict(spec.key)
        [fresh] = pool.sidecars()
        assert fresh is not loading and fresh.state is State.READY and fresh.restarts == 1
        assert pool.backoffs() == [] and pool._failures == {}
