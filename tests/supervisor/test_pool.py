"""The pool: its policy on trio's mock clock with in-memory sidecars, then end to end on the fake.

The first part runs on ``MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock``): leases, spawn coalescing, fairness, LRU eviction, waiting
for room, queues, idle TTL, crash-loop backoff, bounded history, reload and
draining, each in milliseconds and with exact times. The second part proves
the same contracts with real processes (the fake llama-server).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from orchestrator.admission import GiB
from orchestrator.cli import main
from orchestrator.config import Config
from orchestrator.errors import (
    BackoffError,
    CapacityError,
    InsufficientMemoryError,
    OverloadedError,
    SpawnError,
)
from orchestrator.footprint import HOST, Footprint
from orchestrator.policy import State, StopReason
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.supervisor.events import Crashed, Exited, FailedToStart, Published, RequestStarted, Stopped
from orchestrator.supervisor.memory import LearnedStore, MemoryPlanner
from orchestrator.supervisor.pool import Pool
from tests.conftest import make_config, pid_alive, routes_for, running_daemon, wait_until
from tests.fakes.sidecar_double import Behaviour, DoubleFactory, double_routes, pool_of_doubles

# -- on the mock clock ----------------------------------------------------------------


async def hold(pool: Pool, name: str, seconds: float, log: list[tuple[str, float]] | None = None) -> None:
    """Lease ``name``'s child for ``seconds``; note when the lease began."""
    async with pool.lease(pool.routes.resolve(name)):
        if log is not None:
            log.append((name, trio.current_time()))
        await trio.sleep(seconds)


async def test_a_lease_counts_in_flight_and_marks_last_use(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(load_s=2.0)})
    async with pool_of_doubles(double_routes(tmp_path, {"m": {}}), factory) as pool:
        spec = pool.routes.resolve("m")
        async with pool.lease(spec) as first, pool.lease(spec) as second:
            assert first is second and trio.current_time() == 2.0
            assert pool.leases(spec.key) == (2, 0)
            await trio.sleep(5)
        assert pool.leases(spec.key) == (0, 0)
        assert pool.describe_one(first)["in_flight"] == 0
        [occupant] = [t.occupant() for t in pool._live.values()]
        assert occupant.last_used == 7.0


async def test_concurrent_requests_for_a_cold_model_cause_one_spawn(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(load_s=3.0, slots=4)})
    async with pool_of_doubles(double_routes(tmp_path, {"m": {}}), factory) as pool:
        served: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(hold, pool, "m", 1.0, served)
        assert len(factory.made) == 1
        # Served once it was ready, four at a time (its slots): the others queue.
        assert sorted(at for _name, at in served) == [3.0] * 4 + [4.0] * 4 + [5.0] * 2


async def test_a_full_pool_stops_the_least_recently_used_idle_child(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    routes = double_routes(tmp_path, {"a": {}, "b": {}, "c": {}}, pool={"max_sidecars": 2})
    async with pool_of_doubles(routes, factory) as pool:
        await hold(pool, "a", 1)
        await hold(pool, "b", 1)
        await hold(pool, "a", 1)  # a is now the more recently used one
        await hold(pool, "c", 1)
        assert sorted(s.spec.model for s in pool.sidecars()) == ["a", "c"]
        [b] = factory.of("b")
        assert b.state is State.EXITED and isinstance(b.outcome, Stopped)
        assert b.outcome.reason is StopReason.LRU
        assert b.outcome.detail.startswith("to make room for c: stopping 1 idle child(ren)")
        assert "sidecars: 1 short" in b.outcome.detail  # the count cap, here
        assert pool.evictions == 1


async def test_a_busy_child_is_never_evicted_the_request_waits_then_gets_503(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    routes = double_routes(tmp_path, {"a": {}, "b": {}}, pool={"max_sidecars": 1, "capacity_wait_s": 20})
    async with pool_of_doubles(routes, factory) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(hold, pool, "a", 100)
        await trio.sleep(5)
        with pytest.raises(CapacityError) as refused:
            await hold(pool, "b", 1)
        assert trio.current_time() == 25.0  # waited exactly capacity_wait_s
        assert "waited 20 s (pool.capacity_wait_s) for room: busy or loading" in str(refused.value)
        assert refused.value.retry_after_s == 5
        assert [s.spec.model for s in pool.sidecars()] == ["a"] and factory.of("b") == []
        nursery.cancel_scope.cancel()


async def test_a_waiting_request_is_served_as_soon_as_the_busy_child_is_done(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"b": Behaviour(load_s=2.0)})
    routes = double_routes(tmp_path, {"a": {}, "b": {}}, pool={"max_sidecars": 1, "capacity_wait_s": 60})
    async with pool_of_doubles(routes, factory) as pool:
        served: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, pool, "a", 10, served)  # ready at 1, busy until 11
            await trio.sleep(2)
            nursery.start_soon(hold, pool, "b", 1, served)
        assert served == [("a", 1.0), ("b", 13.0)]  # a done at 11, stopped, b loaded in 2 s


async def test_waiters_keep_the_child_they_waited_for(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A child that just became ready belongs to the requests that waited for it, not to an eviction."""
    factory = DoubleFactory({"a": Behaviour(load_s=5.0)})
    routes = double_routes(tmp_path, {"a": {}, "b": {}}, pool={"max_sidecars": 1})
    async with pool_of_doubles(routes, factory) as pool:
        served: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(hold, pool, "a", 1, served)
            await trio.sleep(1)  # a is loading, its three requests wait
            nursery.start_soon(hold, pool, "b", 1, served)
        assert served[:3] == [("a", 5.0)] * 3 and served[3][0] == "b"
        [a] = factory.of("a")
        assert a.outcome is not None and a.outcome.kind == "stopped" and len(factory.made) == 2


async def test_a_busy_childs_slots_go_to_its_waiters_in_the_order_they_came(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(slots=1)})
    routes = double_routes(tmp_path, {"m": {}}, pool={"capacity_wait_s": 1000})
    async with pool_of_doubles(routes, factory) as pool:
        served: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, pool, "m", 10)  # ready at 1, busy until 11
            await trio.sleep(1.5)
            for _ in range(6):  # from 1.5 s on, one a second, while it is busy
                nursery.start_soon(hold, pool, "m", 10, served)
                await trio.sleep(1)
        assert [at for _, at in served] == [11.0, 21.0, 31.0, 41.0, 51.0, 61.0]


async def test_under_steady_load_no_request_waits_longer_than_its_turn(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Six clients, two slots, requests back to back: first come first served keeps every wait
    at two turns (20 s), well inside capacity_wait_s; a free-for-all could starve one past it."""
    factory = DoubleFactory({"m": Behaviour(slots=2)})
    routes = double_routes(tmp_path, {"m": {}}, pool={"capacity_wait_s": 35})
    waits: list[float] = []

    async def client() -> None:
        for _ in range(8):
            asked = trio.current_time()
            async with pool.lease(pool.routes.resolve("m")):
                waits.append(trio.current_time() - asked)
                await trio.sleep(10)

    async with pool_of_doubles(routes, factory) as pool, trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(client)
    assert len(waits) == 48 and max(waits) <= 21  # 20 s of turns, plus the 1 s load of the first


async def test_a_full_queue_gets_429_at_once(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    factory = DoubleFactory({"m": Behaviour(slots=1)})
    routes = double_routes(tmp_path, {"m": {}}, pool={"max_queue": 1})
    async with pool_of_doubles(routes, factory) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(hold, pool, "m", 50)
        await trio.sleep(2)
        nursery.start_soon(hold, pool, "m", 1)  # queued behind the first
        await trio.sleep(1)
        assert pool.leases(pool.routes.key_of("m")) == (1, 1)
        with pytest.raises(OverloadedError, match=r"serving 1 requests \(its limit\) and 1 more are waiting"):
            await hold(pool, "m", 1)
        assert trio.current_time() == 3.0
        nursery.cancel_scope.cancel()


async def test_idle_ttl_stops_an_idle_child_on_time_but_never_a_busy_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    routes = double_routes(tmp_path, {"m": {}, "forever": {"ttl_s": 0}}, pool={"idle_ttl_s": 10})
    async with pool_of_doubles(routes, factory) as pool:
        await hold(pool, "forever", 1)
        await hold(pool, "m", 35)  # three TTLs, busy all along
        [m] = factory.of("m")
        assert m.state is State.READY
        released = trio.current_time()
        await m.wait_exited()
        assert trio.current_time() - released == 10.0
        assert m.stop_reason is StopReason.TTL and pool.evictions == 1
        await trio.sleep(1000)
        assert [s.spec.model for s in pool.sidecars()] == ["forever"]  # a TTL of 0 means never


async def test_a_crash_looping_model_backs_off_and_is_tried_again_when_the_backoff_ends(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(fails_after_s=0.5)})
    async with pool_of_doubles(double_routes(tmp_path, {"m": {}}), factory) as pool:
        spec = pool.routes.resolve("m")
        for _ in range(3):  # the first failures are tried again at once
            with pytest.raises(SpawnError) as failed:
                await pool.preload(spec)
            assert not isinstance(failed.value, BackoffError)
        with pytest.raises(BackoffError) as backing_off:
            await pool.preload(spec)
        assert "keeps failing (3 times in the last 60 s); not restarting it for 1.0 s more" in str(
            backing_off.value
        )
        assert "double: failed to load model" in backing_off.value.stderr_tail
        assert backing_off.value.retry_after_s == 1 and len(factory.made) == 3  # nothing was spawned
        [entry] = pool.backoffs()
        assert entry["failures"] == 3 and entry["retry_in_s"] == 1.0
        await trio.sleep(1)  # the backoff ends: one more try, which fails and doubles it
        with pytest.raises(SpawnError):
            await pool.preload(spec)
        assert len(factory.made) == 4
        with pytest.raises(BackoffError) as longer:
            await pool.preload(spec)
        assert longer.value.retry_after_s == 2
        await trio.sleep(61)  # quiet for longer than the window: a clean slate
        assert pool.backoffs() == []
        factory.behaviours["m"] = Behaviour()
        assert (await pool.preload(spec)).state is State.READY


async def test_the_crash_loop_rule_is_configurable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(fails_after_s=0.5)})
    crash_loop = {"failures": 1, "window_s": 10, "max_backoff_s": 4}
    routes = double_routes(tmp_path, {"m": {}}, pool={"crash_loop": crash_loop})
    async with pool_of_doubles(routes, factory) as pool:
        spec = pool.routes.resolve("m")
        retry_after = []
        for _ in range(4):
            with pytest.raises(SpawnError):
                await pool.preload(spec)
            with pytest.raises(BackoffError) as backing_off:
                await pool.preload(spec)
            retry_after.append(backing_off.value.retry_after_s)
            await trio.sleep(backing_off.value.retry_after_s)
        assert retry_after == [1, 2, 4, 4]  # from the first failure, doubling, capped at max_backoff_s


async def test_a_child_that_crashes_after_it_was_ready_is_replaced_and_counted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    async with pool_of_doubles(double_routes(tmp_path, {"m": {}}), factory) as pool:
        first = await pool.preload(pool.routes.resolve("m"))
        [double] = factory.made
        double.crash()
        await double.wait_exited()
        assert isinstance(double.outcome, Crashed) and pool.sidecars() == []
        second = await pool.preload(pool.routes.resolve("m"))
        assert second is not first and second.restarts == 1
        assert pool._crashes.backoff(second.key, trio.current_time()) is None  # one crash: no backoff
        assert second.key in pool._crashes


async def test_history_of_keys_brought_by_requests_is_forgotten(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(fails_after_s=0.1)})
    routes = double_routes(tmp_path, {"m": {"allow_request_flags": True}})
    async with pool_of_doubles(routes, factory) as pool:
        for size in range(512, 512 + 50):
            with pytest.raises(SpawnError):
                await pool.preload(pool.routes.resolve("m", ["--ctx-size", str(size)]))
        assert len(pool._spawns) == 50 and len(pool._crashes) == 50
        await trio.sleep(61)
        with pytest.raises(SpawnError):
            await pool.preload(pool.routes.resolve("m"))
        assert list(pool._spawns) == [pool.routes.key_of("m")]  # the configured key is remembered
        assert len(pool._crashes) == 1


async def test_evicting_a_loading_child_is_not_a_crash_and_its_waiter_gets_a_fresh_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(load_s=5)})
    async with pool_of_doubles(double_routes(tmp_path, {"m": {}}), factory) as pool:
        spec = pool.routes.resolve("m")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.preload, spec)
            await trio.sleep(1)
            assert await pool.evict(spec.key)
        first, fresh = factory.made
        assert isinstance(first.outcome, Stopped) and first.outcome.reason is StopReason.MANUAL
        assert fresh.state is State.READY and fresh.restarts == 1
        assert pool.backoffs() == [] and spec.key not in pool._crashes


async def test_a_stop_drains_in_flight_requests_but_only_for_drain_timeout_s(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    routes = double_routes(tmp_path, {"short": {}, "long": {}}, pool={"drain_timeout_s": 30})
    async with pool_of_doubles(routes, factory) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(hold, pool, "short", 10)
        nursery.start_soon(hold, pool, "long", 100)
        await trio.sleep(2)
        began = trio.current_time()
        async with trio.open_nursery() as stops:
            for name in ("short", "long"):
                stops.start_soon(pool.evict, pool.routes.key_of(name))
            await factory.of("short")[0].wait_exited()
            assert trio.current_time() - began == 9.0  # its request finished
        assert trio.current_time() - began == 30.0  # the long one was cut at drain_timeout_s
        nursery.cancel_scope.cancel()


async def test_reload_keeps_unchanged_children_and_drains_the_rest(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    routes = double_routes(tmp_path, {"a": {}, "b": {}})
    async with pool_of_doubles(routes, factory) as pool, trio.open_nursery() as nursery:
        await hold(pool, "a", 1)
        nursery.start_soon(hold, pool, "b", 20)
        await trio.sleep(2)
        kept, stopping = pool.apply(double_routes(tmp_path, {"a": {}}))  # b is gone from the config
        assert kept == [routes.key_of("a")] and stopping == [routes.key_of("b")]
        [b] = factory.of("b")
        assert b.state is State.STOPPING
        await b.wait_exited()
        assert trio.current_time() == 23.0  # after its request (loaded at 3, held 20 s), not before
        assert b.stop_reason is StopReason.RELOAD and factory.of("a")[0].state is State.READY


async def test_events_tell_a_sidecars_life_in_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory()
    async with pool_of_doubles(double_routes(tmp_path, {"m": {}}), factory) as pool:
        with pool.events.subscribe() as feed:
            await hold(pool, "m", 1)
            await pool.evict(pool.routes.key_of("m"))
            pool.close_feeds()
            kinds = [item.event.kind async for item in feed if isinstance(item, Published)]
        assert kinds == ["spawn", "starting", "ready", "request", "request", "evicted", "exited"]


# -- end to end, on the fake llama-server ---------------------------------------------------


@asynccontextmanager
async def running_pool(config: Config, binary: LlamaServerBinary) -> AsyncIterator[Pool]:
    async with trio.open_nursery() as nursery:
        pool = Pool(routes_for(config, binary))
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


async def test_real_idle_ttl_stops_the_process(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, pool={"idle_ttl_s": 0.2})
    async with running_pool(config, fake_binary) as pool:
        sidecar = await pool.preload(pool.routes.resolve("m"))
        await sidecar.wait_exited()
        assert sidecar.outcome is not None and sidecar.outcome.kind == "stopped"
        assert pool.sidecars() == [] and pool.evictions == 1
        assert sidecar.pid is not None and not pid_alive(sidecar.pid)


async def test_real_a_busy_model_gets_a_second_process_on_the_other_gpu_and_it_serves_half(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With pack, a second child would fit on CUDA0 beside the first: a copy goes to the other GPU."""
    gpus = "CUDA0:24576:24000,CUDA1:24576:24000"
    binary = dataclasses.replace(fake_binary, env={"FAKE_LLAMA_DEVICES": gpus})
    breakdown = {"Host": [10, 1, 1], "CUDA0": [2000, 100, 100]}
    path = fake_model("m", slots=1, reply_delay_s=0.3, breakdown=breakdown)
    config = make_config(
        tmp_path,
        {"m": {"path": path, "replicas_max": 2}},
        pool={"placement": "pack", "replica_wait_s": 0.2, "prompt_cache_mib": 0, "capacity_wait_s": 60},
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    started: list[str] = []
    async with running_daemon(config, binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        assert daemon.pool is not None

        def note(event: object) -> None:
            if isinstance(event, RequestStarted):
                started.append(event.key)

        daemon.pool.observers.append(note)

        async def ask() -> None:
            assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(ask)
        first, copy = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
        assert copy["copy_of"] == first["key"] and copy["key"] == f"{first['key']}.2"
        assert first["memory"]["devices"] == ["CUDA0"] and copy["memory"]["devices"] == ["CUDA1"]
        assert "--slot-save-path" not in copy["argv"]  # one KV cache per key: the first copy's
        assert len(started) == 12 and started.count(copy["key"]) >= 3  # it took a share of the queue
        # ps names the copy by its first copy's short key and its number, and evict takes that name;
        # the short key alone names the first copy.
        assert await trio.to_thread.run_sync(partial(main, ["ps", "--url", url])) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:3]]
        short = first["key"][:8]
        assert [(row[0], row[-3]) for row in rows] == [(short, "CUDA0"), (f"{short}.2", "CUDA1")]
        assert await trio.to_thread.run_sync(partial(main, ["evict", "--url", url, f"{short}.2"])) == 0
        assert await trio.to_thread.run_sync(partial(main, ["evict", "--url", url, short])) == 0
        assert (await client.get(f"{url}/api/sidecars")).json()["sidecars"] == []


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
        assert final.key == spec_a.key and final is not first_a and final.restarts == 1
        assert spec_b.key not in [s.key for s in pool.sidecars()]


async def test_real_crash_loop_fails_fast_with_the_childs_stderr(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(exit_during_load=9)}})
    async with running_pool(config, fake_binary) as pool:
        spec = pool.routes.resolve("m")
        outcomes = []
        with pool.events.subscribe() as feed:
            for _ in range(3):
                with pytest.raises(SpawnError):
                    await pool.preload(spec)
            with pytest.raises(BackoffError) as backing_off:
                await pool.preload(spec)
            pool.close_feeds()
            outcomes = [item.event.outcome async for item in feed if isinstance(item, Published)
                        and isinstance(item.event, Exited)]  # fmt: skip
        assert "exit code 9" in str(backing_off.value)
        assert "fake: failed to load model" in backing_off.value.stderr_tail
        assert len(outcomes) == 3 and all(isinstance(o, FailedToStart) for o in outcomes)
        assert all(o.exit_code == 9 for o in outcomes)


# -- memory, on the mock clock ---------------------------------------------------------------


def learned_planner(routes: RouteTable, gib: dict[str, float]) -> MemoryPlanner:
    """A planner that knows what each model's child uses on the host (as if learned before)."""
    store = LearnedStore(None)
    for name, size in gib.items():
        spec = routes.resolve(name)
        store.put(spec.key, spec.binary, Footprint({HOST: int(size * GiB)}, source="learned"), None)
    return MemoryPlanner(routes.config, store, host_total=64 * GiB)


def memory_routes(tmp_path: Path, **pool: Any) -> RouteTable:
    # No prompt cache: a child's host need is what it learned plus the process (32 MiB).
    return double_routes(
        tmp_path,
        {"a": {}, "b": {}, "huge": {}},
        pool={"memory_budget": "5 GiB", "prompt_cache_mib": 0, **pool},
    )


async def test_memory_that_holds_one_child_but_not_two_stops_the_idle_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = memory_routes(tmp_path)
    factory = DoubleFactory()
    async with pool_of_doubles(routes, factory, learned_planner(routes, {"a": 3, "b": 3})) as pool:
        await hold(pool, "a", 1)
        await hold(pool, "b", 1)
        [a] = factory.of("a")
        assert isinstance(a.outcome, Stopped) and "Host: " in a.outcome.detail and "short" in a.outcome.detail
        assert [s.spec.model for s in pool.sidecars()] == ["b"]
        evict, admit = list(pool.memory.decisions)[-2:]
        assert evict["decision"] == "evict" and evict["model"] == "b" and admit["decision"] == "admit"
        assert evict["source"] == "learned" and evict["need_mib"] == {"Host": 3 * 1024 + 32}


async def test_memory_held_by_a_busy_child_is_waited_for_then_given(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = memory_routes(tmp_path, capacity_wait_s=30)
    factory = DoubleFactory()
    async with pool_of_doubles(routes, factory, learned_planner(routes, {"a": 3, "b": 3})) as pool:
        served: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, pool, "a", 10, served)  # ready at 1, busy until 11
            await trio.sleep(2)
            nursery.start_soon(hold, pool, "b", 1, served)
            await trio.sleep(1)
            assert pool.memory.decisions[-1]["decision"] == "wait"
        assert served == [("a", 1.0), ("b", 12.0)]  # a stopped at 11, b loaded in 1 s


async def test_memory_held_too_long_ends_in_503(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = memory_routes(tmp_path, capacity_wait_s=5)
    async with (
        pool_of_doubles(routes, DoubleFactory(), learned_planner(routes, {"a": 3, "b": 3})) as pool,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(hold, pool, "a", 100)
        await trio.sleep(2)
        with pytest.raises(
            CapacityError, match=r"b waited 5 s \(pool.capacity_wait_s\) for room: busy or loading"
        ):
            await hold(pool, "b", 1)
        assert trio.current_time() == 7.0
        nursery.cancel_scope.cancel()


async def test_what_can_never_fit_is_refused_at_once_and_nobody_is_stopped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = memory_routes(tmp_path)
    factory = DoubleFactory()
    async with pool_of_doubles(routes, factory, learned_planner(routes, {"a": 3, "huge": 8})) as pool:
        await hold(pool, "a", 1)
        began = trio.current_time()
        with pytest.raises(InsufficientMemoryError) as refused:
            await hold(pool, "huge", 1)
        assert trio.current_time() == began  # at once
        message = str(refused.value)
        assert "huge cannot start: it is larger than the budget even with nothing else running" in message
        assert "Host: needs 8.0 GiB, budget 5.0 GiB" in message and "(learned)" in message
        assert factory.of("huge") == [] and [s.spec.model for s in pool.sidecars()] == ["a"]


async def test_pinned_children_are_kept_and_low_priority_ones_go_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    models = {"pinned": {"pin": True}, "low": {"priority": -1}, "high": {"priority": 5}, "new": {}}
    routes = double_routes(
        tmp_path, models, pool={"memory_budget": "9 GiB", "prompt_cache_mib": 0, "idle_ttl_s": 60}
    )
    factory = DoubleFactory()
    planner = learned_planner(routes, {"pinned": 3, "low": 2, "high": 2, "new": 2})
    async with pool_of_doubles(routes, factory, planner) as pool:
        for name in ("low", "high", "pinned"):  # low is the least recently used... but its priority decides
            await hold(pool, name, 1)
        await hold(pool, "new", 1)
        assert sorted(s.spec.model for s in pool.sidecars()) == ["high", "new", "pinned"]
        await trio.sleep(120)  # past the idle TTL
        assert [s.spec.model for s in pool.sidecars()] == ["pinned"]  # pinned: never for idleness


# -- copies of a busy child, on the mock clock ---------------------------------------------------


async def steady_load(pool: Pool, name: str, clients: int, requests: int, served: list[str]) -> None:
    """``clients`` clients, each sending ``requests`` 10 s requests back to back; ``served`` gets the
    key of the child that served each."""

    async def client() -> None:
        for _ in range(requests):
            async with pool.lease(pool.routes.resolve(name)) as sidecar:
                served.append(sidecar.key)
                await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)


async def test_a_steady_queue_starts_a_second_copy_that_takes_half_of_the_load(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(slots=1)})
    routes = double_routes(
        tmp_path, {"m": {"replicas_max": 2}}, pool={"capacity_wait_s": 1000, "replica_wait_s": 2}
    )
    async with pool_of_doubles(routes, factory) as pool:
        served: list[str] = []
        await steady_load(pool, "m", clients=4, requests=5, served=served)
        first, second = factory.of("m")  # one copy more, and only one
        key = pool.routes.key_of("m")
        assert (first.key, second.key, second.spec.copy_of) == (key, f"{key}.2", key)
        # Ready at 1 s; the waiters queue from then on and the first of them asks for a copy at 3 s.
        assert second.ready_at == 4.0
        assert abs(served.count(first.key) - served.count(second.key)) <= 2  # 20 requests: about half each
        assert pool.describe_one(second)["copy_of"] == key


async def test_no_copy_without_replicas_max_and_none_while_a_slot_frees_in_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    factory = DoubleFactory({"m": Behaviour(slots=1), "r": Behaviour(slots=1)})
    routes = double_routes(
        tmp_path, {"m": {}, "r": {"replicas_max": 3}}, pool={"capacity_wait_s": 1000, "replica_wait_s": 15}
    )
    async with pool_of_doubles(routes, factory) as pool:
        await steady_load(pool, "m", clients=3, requests=2, served=[])
        await steady_load(pool, "r", clients=2, requests=2, served=[])  # each waits 10 s: under 15 s
        assert len(factory.of("m")) == 1 and len(factory.of("r")) == 1


async def test_idle_copies_go_first_for_room_and_by_their_own_ttl(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = double_routes(
        tmp_path,
        {"old": {}, "m": {"replicas_max": 2}, "new": {}},
        pool={"memory_budget": "10 GiB", "prompt_cache_mib": 0, "capacity_wait_s": 1000,
              "replica_wait_s": 1, "replica_idle_ttl_s": 300},
    )  # fmt: skip
    factory = DoubleFactory({"m": Behaviour(slots=1)})
    planner = learned_planner(routes, {"old": 3, "m": 3, "new": 3})  # copies need what the first learned
    async with pool_of_doubles(routes, factory, planner) as pool:
        await hold(pool, "old", 1)  # the least recently used from now on
        await steady_load(pool, "m", clients=3, requests=2, served=[])
        first, copy = factory.of("m")
        assert {s.key for s in pool.sidecars()} == {pool.routes.key_of("old"), first.key, copy.key}
        await hold(pool, "new", 1)  # 4 x 3 GiB > 10 GiB: one must go, and it is the idle copy
        assert isinstance(copy.outcome, Stopped) and copy.outcome.reason is StopReason.LRU
        assert sorted(s.spec.model for s in pool.sidecars()) == ["m", "new", "old"]
        # A copy started again stops by its own idle TTL (300 s); the first copy has none.
        await hold(pool, "old", 0)
        await steady_load(pool, "m", clients=3, requests=2, served=[])
        *_, again = factory.of("m")
        assert again.key == f"{first.key}.2" and again.outcome is None
        await trio.sleep(301)
        assert isinstance(again.outcome, Stopped) and again.outcome.reason is StopReason.TTL
        assert first.outcome is None


async def test_a_copy_that_does_not_fit_beside_busy_children_is_not_started(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = double_routes(
        tmp_path,
        {"m": {"replicas_max": 2}},
        pool={"memory_budget": "5 GiB", "prompt_cache_mib": 0, "capacity_wait_s": 1000, "replica_wait_s": 1},
    )
    factory = DoubleFactory({"m": Behaviour(slots=1)})
    async with pool_of_doubles(routes, factory, learned_planner(routes, {"m": 3})) as pool:
        served: list[str] = []
        await steady_load(pool, "m", clients=2, requests=2, served=served)
        assert len(factory.of("m")) == 1 and len(served) == 4  # all served by the one child, in turn
