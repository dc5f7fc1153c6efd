"""Ollama's routes on the fake llama-server: errors in Ollama's shape, a child dying mid-stream,
keys, keep_alive, an empty generate loading and unloading."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, poll_until, running_daemon

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
API_KEY, ADMIN_KEY = "sk-ollama-api-key-0001", "sk-ollama-admin-key-01"


async def test_errors_come_in_ollamas_shape_with_their_status(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    models = {
        "m": {"path": fake_model("m")},
        "dies": {"path": fake_model("dies", crash_after_chunks=2, tokens=8)},
    }
    config = make_config(tmp_path, models)
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        for body, status, words in (
            (b"{", 400, "not JSON"),
            (b"[]", 400, "a JSON object"),
            (json.dumps({"model": "m", "messages": "hi"}).encode(), 400, "messages must be a list"),
            (json.dumps({"model": "m", **CHAT, "keep_alive": "soon"}).encode(), 400, "keep_alive"),
            (json.dumps({"model": "nope", **CHAT}).encode(), 404, "known models: dies, m"),
        ):
            answer = await client.post(f"{url}/api/chat", content=body)
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"] == "application/json"
            assert words in answer.json()["error"] and set(answer.json()) == {"error"}

        # The child dies after two chunks: the stream ends with an error line, not a hang.
        async with client.stream("POST", f"{url}/api/chat", json={"model": "dies", **CHAT}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in streamed.aiter_lines() if line]
        assert [line["message"]["content"] for line in lines[:-1]] and "error" in lines[-1]
        assert not any(line.get("done") for line in lines)

        answer = await client.request("DELETE", f"{url}/api/delete", json={"model": "m"})
        assert answer.status_code == 400 and "come from its configuration" in answer.json()["error"]


async def test_the_api_keys_open_ollamas_routes_and_the_admin_routes_stay_closed(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(
        tmp_path, {"m": {"path": fake_model("m")}}, server={"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY]}
    )
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{url}/api/tags")).status_code == 401
        user = {"Authorization": f"Bearer {API_KEY}"}
        assert (await client.get(f"{url}/api/tags", headers=user)).json()["models"][0]["name"] == "m"
        answer = await client.post(
            f"{url}/api/chat", json={"model": "m", "stream": False, **CHAT}, headers=user
        )
        assert answer.status_code == 200 and answer.json()["done"] is True
        assert (await client.get(f"{url}/api/sidecars", headers=user)).status_code == 401


async def test_keep_alive_and_an_empty_generate_load_and_unload(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model("m")}}, pool={"idle_ttl_s": 3600})
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:

        async def models() -> list[str]:
            return [m["name"] for m in (await client.get(f"{url}/api/ps")).json()["models"]]

        loaded = await client.post(f"{url}/api/generate", json={"model": "m"})
        assert loaded.json()["done_reason"] == "load" and await models() == ["m"]
        # keep_alive "-1": never stopped for idleness (its expiry far ahead); "10m": ten minutes from now.
        await client.post(f"{url}/api/chat", json={"model": "m", "stream": False, "keep_alive": -1, **CHAT})
        [forever] = (await client.get(f"{url}/api/ps")).json()["models"]
        assert forever["expires_at"] > "2500"
        await client.post(
            f"{url}/api/chat", json={"model": "m", "stream": False, "keep_alive": "10m", **CHAT}
        )
        assert daemon.pool is not None
        [key] = [s.key for s in daemon.pool.sidecars()]
        expires = daemon.pool.expires_at(key)
        assert expires is not None and 590 < expires - time.time() <= 600
        unloaded = await client.post(f"{url}/api/generate", json={"model": "m", "keep_alive": 0})
        assert unloaded.json()["done_reason"] == "unload"

        async def gone() -> bool:
            return await models() == []

        await poll_until(gone)


async def test_a_client_that_leaves_mid_stream_ends_the_childs_work(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"slow": {"path": fake_model("slow", tokens=400, token_delay_s=0.05)}})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{url}/api/chat", json={"model": "slow", **CHAT}) as streamed:
            lines = streamed.aiter_lines()
            assert json.loads(await anext(lines))["done"] is False
            assert json.loads(await anext(lines))["done"] is False
        # Gone after two of 400 tokens (20 s of them): the exchange ends, the lease with it.

        async def idle() -> bool:
            sidecars = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
            return sidecars[0]["in_flight"] == 0

        await poll_until(idle, 5)
