"""Load on the real llama-server: 32 concurrent streams across two models, with room and with swapping.

The CI version is small (16 tokens a stream). LLAMA_SIDECAR_LONG_TESTS=1 makes the
streams longer and the run heavier (see the README).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, running_daemon

LONG = os.environ.get("LLAMA_SIDECAR_LONG_TESTS") == "1"
CLIENTS = 32
TOKENS = 128 if LONG else 16
REQUEST_DEADLINE_S = 240 if LONG else 90


async def stream_once(client: httpx.AsyncClient, url: str, model: str) -> tuple[int, int | None]:
    """(status, tokens the child reports having generated); the stream must end properly."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    with trio.fail_after(REQUEST_DEADLINE_S):  # none may hang
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, None
            predicted, done = None, False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    predicted = chunk.get("timings", {}).get("predicted_n", predicted)
            assert done, "the stream ended without [DONE]"
            return 200, predicted


async def run_load(url: str) -> tuple[list[tuple[int, int | None]], list[dict[str, Any]]]:
    """Every client's outcome, and every eviction seen on the events feed meanwhile."""
    results: list[tuple[int, int | None]] = []
    evictions: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(
            timeout=httpx.Timeout(10, read=None), limits=httpx.Limits(max_connections=64)
        ) as client,
        open_websocket_url(url.replace("http://", "ws://") + "/ws/events") as events,
        trio.open_nursery() as watchers,
    ):

        async def watch() -> None:
            while True:
                event = json.loads(await events.get_message())
                if event["type"] == "evicted":
                    evictions.append(event)

        async def one(index: int) -> None:
            results.append(await stream_once(client, url, "a" if index % 2 else "b"))

        watchers.start_soon(watch)
        async with trio.open_nursery() as clients:
            for index in range(CLIENTS):
                clients.start_soon(one, index)
        watchers.cancel_scope.cancel()
    return results, evictions


def two_models(tmp_path: Path, demo_model: Path, pool: dict[str, Any]) -> Any:
    # One GGUF, two children; one thread each, so that two children fit two cores without spinning.
    flags = {"a": ["-c", "1024", "-t", "1"], "b": ["-c", "2048", "-t", "1"]}
    models = {name: {"path": str(demo_model), "flags": flag} for name, flag in flags.items()}
    return make_config(tmp_path, models, pool=pool)


@pytest.mark.real
async def test_32_streams_across_two_models_all_complete(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = two_models(tmp_path, demo_model, {"max_sidecars": 2})
    async with running_daemon(config, real_binary) as (url, _daemon):
        results, evictions = await run_load(url)
    assert len(results) == CLIENTS
    assert results == [(200, TOKENS)] * CLIENTS  # every stream, every token
    assert evictions == []


@pytest.mark.real
async def test_32_streams_with_forced_swapping_resolve_without_killing_a_busy_child(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = two_models(tmp_path, demo_model, {"max_sidecars": 1, "capacity_wait_s": 20})
    async with running_daemon(config, real_binary) as (url, _daemon):
        results, evictions = await run_load(url)
    assert len(results) == CLIENTS  # every request resolved (a hang would have failed its deadline)
    completed = [r for r in results if r[0] == 200]
    assert all(tokens == TOKENS for _, tokens in completed)
    assert all(status in (200, 429, 503) for status, _ in results)
    assert len(completed) >= CLIENTS // 2  # the swapping served both models, not just refusals
    assert all(e["sidecar"]["in_flight"] == 0 for e in evictions)  # never evicted under a request
    assert any(e["reason"] == "lru" for e in evictions)
