"""GET /metrics: the pool's and the requests' series, and the children's own, from a running daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.routing import LlamaServerBinary
from tests.conftest import free_port, make_config, poll_until, running_daemon

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def in_flight(client: httpx.AsyncClient, url: str, model: str) -> bool:
    sidecars = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
    return any(s["model"] == model and s["in_flight"] > 0 for s in sidecars)


def promtool_problems(text: str) -> list[str]:
    """What `promtool check metrics` says of an exposition, less the colons of names we do not choose:
    llama.cpp's own (``llamacpp:``) and the endpoint picker's (``vllm:``)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is needed (Debian package prometheus; ops/install.sh --dev installs it)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode in (0, 3), checked.stderr  # 3: lint findings; 1: it could not parse
    lines = (checked.stdout + checked.stderr).splitlines()
    return [line for line in lines if line and not line.startswith(("llamacpp:", "vllm:"))]


async def test_requests_tokens_refusals_and_the_children_series_in_one_scrape(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(
        tmp_path,
        {
            "m": {"path": fake_model("m", tokens=5)},
            "slow": {"path": fake_model("slow", metrics_delay_s=30)},
            "one": {"path": fake_model("one", slots=1, reply_delay_s=1)},
        },
        agents={"coder": {"model": "m", "flags": ["-c", "512"]}},
        pool={"max_queue": 0},
    )
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        for _ in range(2):
            assert (
                await client.post(f"{url}/v1/chat/completions", json={"model": "m", **CHAT})
            ).status_code == 200
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json={"model": "coder", "stream": True, **CHAT}
        ) as streamed:
            assert streamed.status_code == 200
            await streamed.aread()
        assert (
            await client.post(f"{url}/v1/chat/completions", json={"model": "nope", **CHAT})
        ).status_code == 404
        assert (await client.post(f"{url}/v1/chat/completions", content=b"{")).status_code == 400
        assert (await client.post(f"{url}/api/models/slow/load")).status_code == 200
        codes: list[int] = []

        async def ask_one() -> None:
            answer = await client.post(f"{url}/v1/chat/completions", json={"model": "one", **CHAT})
            codes.append(answer.status_code)

        assert (await client.post(f"{url}/api/models/one/load")).status_code == 200
        async with trio.open_nursery() as nursery:  # one slot, no queue: the second is refused
            nursery.start_soon(ask_one)
            await poll_until(partial(in_flight, client, url, "one"))
            nursery.start_soon(ask_one)
        assert sorted(codes) == [200, 429]

        scrape = await client.get(f"{url}/metrics")
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
        found = samples(scrape.text)
        route = "/v1/chat/completions"
        assert (
            value(found, "llama_sidecar_requests_total", model="m", agent="m", route=route, code="200") == 2
        )
        assert (
            value(found, "llama_sidecar_requests_total", model="m", agent="coder", route=route, code="200")
            == 1
        )
        assert value(found, "llama_sidecar_requests_total", model="", agent="", route=route, code="404") == 1
        assert value(found, "llama_sidecar_refused_requests_total", model="", code="model_not_found") == 1
        assert value(found, "llama_sidecar_refused_requests_total", model="", code="invalid_json") == 1
        assert (
            value(found, "llama_sidecar_refused_requests_total", model="one", code="sidecar_overloaded") == 1
        )
        assert (
            value(found, "llama_sidecar_requests_total", model="one", agent="one", route=route, code="429")
            == 1
        )
        # the fake answers 5 tokens for 3 prompt tokens; the stream's come from its final timings event
        assert value(found, "llama_sidecar_generated_tokens_total", model="m", agent="m") == 10
        assert value(found, "llama_sidecar_generated_tokens_total", model="m", agent="coder") == 5
        assert value(found, "llama_sidecar_prompt_tokens_total", model="m", agent="coder") == 3
        assert value(found, "llama_sidecar_generation_tokens_per_second_count", model="m", agent="coder") == 1
        ttft = value(
            found, "llama_sidecar_time_to_first_token_seconds_count", model="m", agent="m", route=route
        )
        assert ttft == 2
        assert value(found, "llama_sidecar_spawns_total", model="m") == 2  # m and coder: two keys
        assert value(found, "llama_sidecar_sidecars", model="m", state="ready") == 2
        assert value(found, "llama_sidecar_load_seconds_count", model="slow") == 1
        assert value(found, "llama_sidecar_memory_budget_bytes", device="Host") > 0

        # Each child's own series with its model and key; the one that does not answer is left out.
        keys = {
            s["model"] + ":" + s["key"] for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
        }
        llamacpp = {
            f"{dict(labels)['model']}:{dict(labels)['key']}": v
            for (name, labels), v in found.items()
            if name == "llamacpp:tokens_predicted_total"
        }
        assert set(llamacpp) == {k for k in keys if k.startswith(("m:", "one:"))}
        assert sum(llamacpp.values()) == 15 + 4  # m's three answers, one's one
        assert value(found, "llama_sidecar_child_scrape_failures_total", model="slow") == 1
        assert promtool_problems(scrape.text) == []

        assert (await client.delete(f"{url}/api/sidecars/slow")).status_code == 200
        later = samples((await client.get(f"{url}/metrics")).text)
        assert value(later, "llama_sidecar_evictions_total", model="slow", reason="manual") == 1
        assert value(later, "llama_sidecar_child_exits_total", model="slow", outcome="stopped") == 1


async def test_metrics_need_the_admin_key_when_there_is_one(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    admin = "a" * 20
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, server={"admin_keys": [admin]})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        refused = await client.get(f"{url}/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        scraped = await client.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert scraped.status_code == 200 and "llama_sidecar_requests_total" in scraped.text


@asynccontextmanager
async def prometheus_scraping(target: str, tmp_path: Path) -> AsyncIterator[str]:
    """A real Prometheus (Debian's) scraping ``target`` (host:port) every second; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is needed (Debian package prometheus; ops/install.sh --dev installs it)")
    config = tmp_path / "prometheus.yml"
    scrape = {"job_name": "llama-sidecar", "scrape_interval": "1s", "static_configs": [{"targets": [target]}]}
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))  # YAML
    address = f"127.0.0.1:{free_port()}"
    argv = [
        binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={address}", "--log.level=warn",
    ]  # fmt: skip
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log)
        try:
            url = f"http://{address}"
            async with httpx.AsyncClient(timeout=5) as client:

                async def ready() -> bool:
                    try:
                        return (await client.get(f"{url}/-/ready")).status_code == 200
                    except httpx.TransportError:
                        return False

                await poll_until(ready, timeout_s=60)
            yield url
        finally:
            process.kill()
            await process.wait()


async def query(url: str, promql: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = (await client.get(f"{url}/api/v1/query", params={"query": promql})).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def ask(url: str, streams: int, plain: int) -> int:
    """Chat through the proxy with the official client; the generated tokens it was told of."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    generated = 0
    messages: Any = [{"role": "user", "content": "Name a colour."}]
    for _ in range(plain):
        answer = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6)
        assert answer.usage is not None
        generated += answer.usage.completion_tokens
    for _ in range(streams):
        stream = client.chat.completions.create(
            model="smollm2",
            messages=messages,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in stream if chunk.usage is not None]
        assert len(usage) == 1
        generated += usage[0].completion_tokens
    return generated


@pytest.mark.real
async def test_real_prometheus_scrapes_requests_tokens_and_llamacpp_series(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "1024", "-t", "1"]}})
    async with (
        running_daemon(config, real_binary) as (url, _daemon),
        prometheus_scraping(url.removeprefix("http://"), tmp_path) as prometheus,
    ):
        generated = await trio.to_thread.run_sync(partial(ask, url, streams=2, plain=3))

        async def scraped_every_request() -> bool:
            found = await query(prometheus, 'sum(llama_sidecar_requests_total{model="smollm2"})')
            return bool(found) and float(found[0]["value"][1]) == 5

        await poll_until(scraped_every_request, timeout_s=60)
        [tokens] = await query(prometheus, 'sum(llama_sidecar_generated_tokens_total{model="smollm2"})')
        assert float(tokens["value"][1]) == generated
        own = await query(prometheus, 'llamacpp:tokens_predicted_total{model="smollm2"}')
        assert len(own) == 1 and own[0]["metric"]["key"] and float(own[0]["value"][1]) >= generated
        [up] = await query(prometheus, 'up{job="llama-sidecar"}')
        assert up["value"][1] == "1"


def model_server(text: str) -> dict[str, Any]:
    """The Gateway API Inference Extension's series, as its endpoint picker reads them."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    [lora] = families["vllm:lora_requests_info"].samples
    names = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
             "vllm:lora_requests_info")  # fmt: skip
    return {
        "types": {name: families[name].type for name in names},
        "waiting": families["vllm:num_requests_waiting"].samples[0].value,
        "running": families["vllm:num_requests_running"].samples[0].value,
        "kv": families["vllm:kv_cache_usage_perc"].samples[0].value,
        "lora": lora.labels,
        "lora_value": lora.value,
    }


async def test_model_server_series_follow_loads_unloads_and_queues(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    models = {
        "a": {"path": fake_model("a", reply_delay_s=3, cached_tokens=256)},
        "b": {"path": fake_model("b", load_s=3)},
        "c": {"path": fake_model("c")},
    }
    config = make_config(tmp_path, models, agents={"a-agent": {"model": "a"}}, pool={"max_sidecars": 2})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        scrape = partial(client.get, f"{url}/metrics")
        idle = model_server((await scrape()).text)
        assert idle["types"] == {
            "vllm:num_requests_waiting": "gauge", "vllm:num_requests_running": "gauge",
            "vllm:kv_cache_usage_perc": "gauge", "vllm:lora_requests_info": "gauge",
        }  # fmt: skip
        # Nothing loaded; two of the four names fit at once (pool.max_sidecars).
        assert idle["lora"] == {"running_lora_adapters": "", "waiting_lora_adapters": "", "max_lora": "4"}
        assert idle["lora_value"] > 1.7e9  # when it was read: the picker keeps the newest series

        chat = partial(client.post, f"{url}/v1/chat/completions")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(chat, json={"model": "a", **CHAT}))
            await poll_until(partial(in_flight, client, url, "a"))
            nursery.start_soon(partial(chat, json={"model": "b", **CHAT}))

            async def b_waits() -> bool:
                return model_server((await scrape()).text)["waiting"] == 1

            await poll_until(b_waits)
            busy = model_server((await scrape()).text)
            assert busy["running"] == 1
            assert busy["lora"] == {
                "running_lora_adapters": "a,a-agent",  # a model and its agent share one child
                "waiting_lora_adapters": "b",
                "max_lora": "3",  # the pool is full (two children): c does not fit now
            }
        answered = model_server((await scrape()).text)
        assert answered["kv"] == 256 / (4 * 512)  # a's slot 0 holds its prompt; the fake's 4 slots of 512
        assert answered["lora"]["running_lora_adapters"] == "a,a-agent,b"

        for key in [s["key"] for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]]:
            await client.delete(f"{url}/api/sidecars/{key}")
        assert (await client.post(f"{url}/api/models/c/load")).status_code == 200
        unloaded = model_server((await scrape()).text)
        assert unloaded["lora"]["running_lora_adapters"] == "c" and unloaded["lora"]["max_lora"] == "4"
        assert unloaded["running"] == unloaded["waiting"] == 0
        assert 0 <= unloaded["kv"] <= 1
