"""Memory with the fake llama-server's two GPUs: devices, budgets, learning per device, a restart."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from orchestrator.admission import GiB, MiB
from orchestrator.footprint import HOST, Footprint
from orchestrator.routing import LlamaServerBinary
from orchestrator.supervisor.memory import LearnedStore, MemoryPlanner
from orchestrator.supervisor.pool import Pool
from tests.conftest import make_config, own_argv, poll_until, routes_for, running_daemon

GPUS = "CUDA0:24576:24000,CUDA1:12288:12000"


def with_gpus(binary: LlamaServerBinary) -> LlamaServerBinary:
    return dataclasses.replace(binary, env={"FAKE_LLAMA_DEVICES": GPUS})


def test_budgets_per_device_from_the_binarys_own_device_list(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    def budgets(pool: dict[str, Any]) -> dict[str, int]:
        config = make_config(tmp_path, {"m": {"path": fake_model()}}, pool=pool)
        planner = MemoryPlanner(config, host_total=32 * GiB)
        planner.discover(routes_for(config, with_gpus(fake_binary)))
        return planner.budgets()

    assert budgets({}) == {HOST: 32 * GiB - int(3.2 * GiB), "CUDA0": 23 * GiB, "CUDA1": 11 * GiB}
    chosen = budgets({"memory_budget": "16 GiB", "gpu_memory_budget": {"CUDA0": "20 GiB", "*": "50%"}})
    assert chosen == {HOST: 16 * GiB, "CUDA0": 20 * GiB, "CUDA1": 6 * GiB}
    assert budgets({"memory_budget": "50%", "gpu_memory_budget": "90%"})["CUDA1"] == int(12 * GiB * 0.9)


def test_learned_footprints_survive_on_disk(tmp_path: Path, fake_binary: LlamaServerBinary) -> None:
    store = LearnedStore(tmp_path / "footprints.json")
    learned = Footprint({HOST: 5 * MiB, "CUDA0": 7 * MiB}, {HOST: {"model": 5 * MiB}}, "learned")
    store.put("k", fake_binary, learned, 123)
    store.save()
    assert LearnedStore(tmp_path / "footprints.json").get("k") == learned
    (tmp_path / "broken.json").write_text("{not json")
    assert LearnedStore(tmp_path / "broken.json").get("k") is None  # unreadable: forgotten, not fatal


def three_models(fake_model: Callable[..., str]) -> dict[str, dict[str, Any]]:
    """Fake models on CUDA0 (their config says so) that say (at --verbosity 4) they use 9.5, 10.5
    and 21.5 GiB of it."""
    return {
        name: {
            "path": fake_model(name, breakdown={"Host": [100, 10, 10], "CUDA0": [weights, 1000, 500]}),
            "devices": ["CUDA0"],
        }
        for name, weights in (("ga", 8000), ("gb", 9000), ("gc", 20000))
    }


def model_config(tmp_path: Path, models: dict[str, dict[str, Any]], cuda0_budget: str) -> Any:
    pool = {"prompt_cache_mib": 0, "gpu_memory_budget": {"CUDA0": cuda0_budget}}
    return make_config(tmp_path, {name: dict(model) for name, model in models.items()}, pool=pool)


async def test_what_children_report_per_device_is_learned_and_used_after_a_restart(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    binary = with_gpus(fake_binary)
    models = three_models(fake_model)  # written once: rewriting a model file would give it new keys
    roomy = model_config(tmp_path, models, "23 GiB")
    async with running_daemon(roomy, binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        for name in ("ga", "gb", "gc"):  # each learned on its first start (gc stops the others for room)
            loaded = (await client.post(f"{url}/api/models/{name}/load")).json()["sidecar"]
            assert loaded["argv"][-2:] == ["--verbosity", "4"]  # asked for its accounting
            assert loaded["memory"]["source"] == "learned"
            weights = {"ga": 8000, "gb": 9000, "gc": 20000}[name]
            assert loaded["memory"]["learned_mib"] == {"CUDA0": weights + 1500, HOST: 120}

    tight = model_config(tmp_path, models, "15 GiB")
    async with running_daemon(tight, binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        ga = (await client.post(f"{url}/api/models/ga/load")).json()["sidecar"]
        assert own_argv(ga["argv"]) == ga["argv"]  # known already: no --verbosity 4 this time
        assert ga["memory"]["source"] == "learned" and ga["memory"]["need_mib"]["CUDA0"] == 9500
        gb = (await client.post(f"{url}/api/models/gb/load")).json()["sidecar"]  # 9.5 + 10.5 > 15 GiB
        assert [s["model"] for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]] == ["gb"]
        refused = await client.post(f"{url}/api/models/gc/load")  # 21.5 GiB: never, here
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "insufficient_memory"
        assert "CUDA0: needs 21.0 GiB, budget 15.0 GiB" in refused.json()["error"]["message"]
        memory = (await client.get(f"{url}/api/memory")).json()
        cuda0 = next(device for device in memory["devices"] if device["device"] == "CUDA0")
        assert cuda0["budget_mib"] == 15 * 1024 and cuda0["total_mib"] == 24576
        assert cuda0["children"] == [{"key": gb["key"], "model": "gb", "mib": 10500}]
        assert memory["decisions"][-1]["decision"] == "never_fits"
        assert [s["model"] for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]] == ["gb"]


# -- placement on the fake's GPUs -----------------------------------------------------------------

TWO_GPUS = "CUDA0:24576:24000,CUDA1:24576:24000"  # budgets 23 GiB each
FOUR_GPUS = ",".join(f"CUDA{i}:12288:12000" for i in range(4))  # budgets 11 GiB each


def gpu_models(fake_model: Callable[..., str]) -> dict[str, dict[str, Any]]:
    """Fake models of 10, 10, 14 and 30 GiB on a GPU (what they say at --verbosity 4, wherever they run)."""
    return {
        name: {"path": fake_model(name, breakdown={"Host": [100, 10, 10], "CUDA0": [gib * 1024 - 1500, 1000, 500]})}  # noqa: E501
        for name, gib in (("a", 10), ("b", 10), ("c", 14), ("big", 30))
    }


def placement_config(tmp_path: Path, models: dict[str, dict[str, Any]], policy: str) -> Any:
    pool = {"prompt_cache_mib": 0, "placement": policy}
    return make_config(tmp_path, {name: dict(model) for name, model in models.items()}, pool=pool)


@asynccontextmanager
async def placement_daemon(
    tmp_path: Path, models: dict[str, dict[str, Any]], policy: str, binary: LlamaServerBinary
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    config = placement_config(tmp_path, models, policy)
    async with running_daemon(config, binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        yield url, client


@asynccontextmanager
async def learned_then_placed(
    tmp_path: Path, gpus: str, binary: LlamaServerBinary, models: dict[str, dict[str, Any]], policy: str
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """A daemon placing ``models`` on the fake's ``gpus`` by ``policy``, once each file was learned."""
    binary = dataclasses.replace(binary, env={"FAKE_LLAMA_DEVICES": gpus})
    await learn(tmp_path, {name: model for name, model in models.items() if "devices" not in model}, binary)
    async with placement_daemon(tmp_path, models, policy, binary) as (url, client):
        yield url, client


async def learn(tmp_path: Path, models: dict[str, dict[str, Any]], binary: LlamaServerBinary) -> None:
    """A first daemon that starts each model once, learning what it uses (the pool's state dir keeps it)."""
    async with placement_daemon(tmp_path, models, "spread", binary) as (url, client):
        for name in models:
            loaded = (await client.post(f"{url}/api/models/{name}/load")).json()["sidecar"]
            assert loaded["memory"]["source"] == "learned", loaded["memory"]
            await client.post(f"{url}/api/sidecars/{loaded['key']}/evict")


def placed(sidecar: dict[str, Any]) -> tuple[str, ...]:
    """The placement flags on a child's command line, with their values."""
    argv = sidecar["argv"]
    return tuple(
        token
        for flag, value in pairwise(argv)
        if flag in ("--device", "--tensor-split")
        for token in (flag, value)
    )


async def load(client: httpx.AsyncClient, url: str, name: str) -> dict[str, Any]:
    answer = await client.post(f"{url}/api/models/{name}/load")
    assert answer.status_code == 200, answer.text
    return answer.json()["sidecar"]  # type: ignore[no-any-return]


async def live(client: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]]:
    return {s["model"]: s for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]}


async def test_spread_puts_two_one_gpu_models_on_different_gpus_and_evicts_only_on_the_gpu_it_needs(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    models = gpu_models(fake_model)
    async with learned_then_placed(tmp_path, TWO_GPUS, fake_binary, models, "spread") as (url, client):
        a = await load(client, url, "a")
        assert placed(a) == ("--device", "CUDA0") and a["memory"]["devices"] == ["CUDA0"]
        b = await load(client, url, "b")  # the emptier GPU now
        assert placed(b) == ("--device", "CUDA1") and b["memory"]["devices"] == ["CUDA1"]
        assert set(b["memory"]["counted_mib"]) == {HOST, "CUDA1"}  # counted on its GPU only
        assert "has the most free memory (spread)" in b["memory"]["placement"]
        # 14 GiB fits neither GPU beside a 10 GiB child: one of them stops, the other stays.
        c = await load(client, url, "c")
        (device,) = c["memory"]["devices"]
        running = await live(client, url)
        assert set(running) == {"c", "b" if device == "CUDA0" else "a"}
        decision = (await client.get(f"{url}/api/memory")).json()["decisions"][-1]
        assert decision["devices"] == [device] and device in decision["placement"]


async def test_pack_fills_one_gpu_and_splits_what_no_gpu_holds_over_two(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    models = gpu_models(fake_model)
    async with learned_then_placed(tmp_path, TWO_GPUS, fake_binary, models, "pack") as (url, client):
        a, b = await load(client, url, "a"), await load(client, url, "b")
        assert placed(a) == placed(b) == ("--device", "CUDA0")  # 10 + 10 GiB: both fit there
        big = await load(client, url, "big")  # 30 GiB: more than any one GPU's 23
        device_flag, tensor_split = placed(big)[1], placed(big)[3]
        assert device_flag == "CUDA0,CUDA1" and len(tensor_split.split(",")) == 2
        counted = big["memory"]["counted_mib"]
        assert counted["CUDA0"] > 1024 and counted["CUDA1"] > 1024  # its need on both
        assert counted["CUDA0"] + counted["CUDA1"] >= 30 * 1024
        assert "no single GPU" in big["memory"]["placement"]
        # The fake, like llama.cpp, put its layers where it was told: what it said is on both GPUs.
        assert set(big["memory"]["learned_mib"]) == {HOST, "CUDA0", "CUDA1"}


async def test_four_gpus_split_a_big_model_over_the_fewest_and_a_pinned_model_stays_on_its_gpu(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    models = gpu_models(fake_model)
    del models["c"], models["b"]
    models["pinned"] = {"path": models["a"]["path"], "devices": ["CUDA3"]}
    async with learned_then_placed(tmp_path, FOUR_GPUS, fake_binary, models, "spread") as (url, client):
        big = await load(client, url, "big")  # 30 GiB over 11 GiB GPUs: three of them
        assert placed(big)[:2] == ("--device", "CUDA0,CUDA1,CUDA2")
        assert big["memory"]["devices"] == ["CUDA0", "CUDA1", "CUDA2"]
        pinned = await load(client, url, "pinned")
        assert placed(pinned) == ("--device", "CUDA3")  # its own flag: the pool added none
        assert pinned["argv"].count("--device") == 1
        assert pinned["memory"]["devices"] == ["CUDA3"] and pinned["memory"]["placement"] is None
        # The same file unpinned goes where spread finds the most room: CUDA3, once free.
        await client.post(f"{url}/api/sidecars/{pinned['key']}/evict")
        a = await load(client, url, "a")
        assert placed(a) == ("--device", "CUDA3")
        # The pinned one still runs on CUDA3 only: the child there makes room, the big one stays.
        pinned = await load(client, url, "pinned")
        assert pinned["memory"]["devices"] == ["CUDA3"]
        assert set(await live(client, url)) == {"big", "pinned"}


# -- the real binary, two real models --------------------------------------------------------

VARIANTS = {
    "smollm2": [
        ["-c", "512"],
        ["-c", "4096"],
        ["-c", "8192", "-ctk", "q8_0", "-ctv", "q8_0"],
        ["-c", "2048", "-fa", "off"],
    ],
    "gemma": [["-c", "1024"], ["-c", "8192"], ["-c", "4096", "-ctk", "q8_0", "-ctv", "q8_0", "-np", "1"]],
}


@pytest.mark.real
async def test_real_estimates_are_within_10_percent_of_llama_servers_own_accounting(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, gemma_model: Path
) -> None:
    models = {
        "smollm2": {"path": str(demo_model)},
        "gemma": {"path": str(gemma_model), "flags": ["--chat-template", "gemma"]},
    }
    agents = {f"{model}-{i}": {"model": model, "flags": flags} for model, variants in VARIANTS.items()
              for i, flags in enumerate(variants)}  # fmt: skip
    config = make_config(tmp_path, models, agents=agents, llama_server={"base_args": ["-t", "1"]})
    routes = routes_for(config, real_binary)
    planner = MemoryPlanner(config, LearnedStore(None))
    await trio.to_thread.run_sync(planner.discover, routes)
    table: list[str] = []
    async with trio.open_nursery() as nursery:
        pool = Pool(routes, memory=planner)
        await nursery.start(pool.run)
        for agent in agents:
            spec = routes.resolve(agent)
            estimated = planner.need(spec).estimate
            sidecar = await pool.preload(spec)
            measured = sidecar.measured
            assert measured is not None, f"{agent}: llama-server printed no accounting"
            assert planner.store.get(spec.key) == measured  # the learned figure is its own
            error = (estimated.total() - measured.total()) / measured.total()
            figures = (
                f"estimate {estimated.total() / MiB:.0f} MiB, llama-server {measured.total() / MiB:.0f} MiB"
            )
            table.append(
                f"{agent} {' '.join(routes.resolve(agent).extra_argv) or ''}: {figures} ({error:+.1%})"
            )
            assert abs(error) < 0.10, table[-1]
            assert planner.need(spec).source == "learned"
            await pool.evict(spec.key)
        nursery.cancel_scope.cancel()
    print("\n".join(table))


@pytest.mark.real
async def test_real_a_budget_for_one_child_stops_the_idle_one_waits_for_a_busy_one_and_refuses_too_big(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, gemma_model: Path
) -> None:
    models = {
        "smollm2": {"path": str(demo_model), "flags": ["-c", "2048", "-t", "1"]},  # about 190 MiB
        "gemma": {
            "path": str(gemma_model),
            "flags": ["-c", "2048", "-t", "1", "--chat-template", "gemma"],
        },  # ~330
    }

    def config(budget: str, wait_s: float = 60) -> Any:
        pool = {"memory_budget": budget, "prompt_cache_mib": 0, "capacity_wait_s": wait_s}
        return make_config(tmp_path, {n: dict(m) for n, m in models.items()}, pool=pool)

    chat = {"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 8}

    @asynccontextmanager
    async def smollm2_served(budget: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
        async with (
            running_daemon(config(budget), real_binary) as (url, _daemon),
            httpx.AsyncClient(timeout=120) as client,
        ):
            answer = await client.post(f"{url}/v1/chat/completions", json={"model": "smollm2", **chat})
            assert answer.status_code == 200
            yield url, client

    async with smollm2_served("450 MiB") as (url, client):
        served = await client.post(f"{url}/v1/chat/completions", json={"model": "gemma", **chat})
        assert served.status_code == 200  # the idle smollm2 was stopped for it
        assert [s["model"] for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]] == ["gemma"]

        # gemma busy with a stream: smollm2 waits for it, then is served.
        stream = {"model": "gemma", "stream": True, **chat, "max_tokens": 64}
        order: list[str] = []

        async def streamed() -> None:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=stream) as response:
                async for _ in response.aiter_lines():
                    pass
            order.append("gemma done")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(streamed)
            await poll_until(partial(busy, client, url, "gemma"))
            answer = await client.post(f"{url}/v1/chat/completions", json={"model": "smollm2", **chat})
            order.append(f"smollm2 {answer.status_code}")
        assert order == ["gemma done", "smollm2 200"]

    # Learned before this daemon started: the figures come from disk.
    async with smollm2_served("250 MiB") as (url, client):
        [child] = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
        assert child["memory"]["source"] == "learned" and "--verbosity" not in child["argv"]
        refused = await client.post(f"{url}/v1/chat/completions", json={"model": "gemma", **chat})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "insufficient_memory"
        assert "budget 250.0 MiB" in refused.json()["error"]["message"]
        [still] = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
        assert still["pid"] == child["pid"]  # nobody was stopped for it


async def busy(client: httpx.AsyncClient, url: str, model: str) -> bool:
    children = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
    return any(c["model"] == model and c["in_flight"] > 0 for c in children)
