"""The whole llama-server API through the daemon, with the real binary, SmolLM2 and real clients.

Each request is also sent to the same child directly (its own port), and the
two answers must match (greedy decoding: the same text; the same shape, status
and token counts): what passes against llama-server directly passes through us.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, poll_until, running_daemon

pytestmark = pytest.mark.real

# What differs between two identical requests: ids, times, speeds, and how much of the prompt was cached.
VOLATILE = {
    "id",
    "created",
    "created_at",
    "timings",
    "system_fingerprint",
    "completed_at",
    "prompt_tokens_details",
}


def same(value: Any) -> Any:
    """An answer without what differs from one request to the next (ids, times, speeds)."""
    if isinstance(value, dict):
        return {k: same(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [same(v) for v in value]
    return value


@pytest.fixture
async def daemon(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> AsyncIterator[tuple[str, httpx.AsyncClient, Callable[[str], str]]]:
    """The daemon with a chat model and an embeddings model of SmolLM2, and a way to reach a child
    directly: ``direct(name)`` is the base URL of that name's running child."""
    models = {
        "smollm2": {"path": str(demo_model), "flags": ["-c", "1024", "-t", "1", "--parallel", "1"]},
        "embed": {
            "path": str(demo_model),
            "flags": ["-c", "512", "-t", "1", "--embeddings", "--pooling", "mean"],
        },
    }
    async with (
        running_daemon(make_config(tmp_path, models), real_binary) as (url, running),
        httpx.AsyncClient(timeout=120) as client,
    ):

        def direct(name: str) -> str:
            key = running.pool.routes.key_of(name)
            sidecar = running.pool.get(key)
            assert sidecar is not None, f"{name} has no child"
            return f"http://127.0.0.1:{sidecar.port}"

        yield url, client, direct


async def both(
    client: httpx.AsyncClient, url: str, direct: str, method: str, path: str, **request: Any
) -> tuple[httpx.Response, httpx.Response]:
    through = await client.request(method, f"{url}{path}", **request)
    straight = await client.request(method, f"{direct}{path}", **request)
    return through, straight


async def test_anthropic_messages_streamed_messages_and_count_tokens_answer_as_the_child_does(
    daemon: tuple[str, httpx.AsyncClient, Callable[[str], str]],
) -> None:
    url, client, direct = daemon
    ask = {
        "model": "smollm2",
        "max_tokens": 12,
        "messages": [{"role": "user", "content": "Say hi."}],
    }
    await client.post(f"{url}/v1/messages", json=ask)  # starts the child

    def with_sdk(base: str) -> dict[str, Any]:
        sdk = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
        greedy = {"extra_body": {"temperature": 0}}  # this SDK takes no temperature of its own
        message = sdk.messages.create(**ask, **greedy)
        with sdk.messages.stream(**ask, **greedy) as stream:
            streamed = stream.get_final_message()
        counted = sdk.messages.count_tokens(model="smollm2", messages=ask["messages"])
        return {
            "message": message.model_dump(),
            "streamed": streamed.model_dump(),
            "count": counted.input_tokens,
        }

    through = await trio.to_thread.run_sync(with_sdk, url)
    straight = await trio.to_thread.run_sync(with_sdk, direct("smollm2"))
    assert same(through) == same(straight)
    assert through["message"]["model"] == "smollm2"  # the public name, not the model file's path
    assert through["message"]["content"][0]["text"] and through["count"] > 5
    assert through["streamed"]["content"][0]["text"] == through["message"]["content"][0]["text"]


async def test_openai_chat_completions_embeddings_and_responses_answer_as_the_child_does(
    daemon: tuple[str, httpx.AsyncClient, Callable[[str], str]],
) -> None:
    url, client, direct = daemon
    await client.post(f"{url}/models/load", json={"model": "smollm2"})
    await client.post(f"{url}/api/models/embed/load")

    def with_sdk(base: str, embed_base: str) -> dict[str, Any]:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        embedder = openai.OpenAI(base_url=f"{embed_base}/v1", api_key="unused", max_retries=0, timeout=120)
        greedy = {"temperature": 0, "seed": 1}
        chat = sdk.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=10, **greedy
        )
        completion = sdk.completions.create(model="smollm2", prompt="The sky is", max_tokens=6, **greedy)
        embedded = embedder.embeddings.create(model="embed", input=["hello", "world"])
        response = sdk.responses.create(model="smollm2", input="Say hi.", max_output_tokens=10, temperature=0)
        events = list(sdk.responses.create(
            model="smollm2", input="Say hi.", max_output_tokens=10, temperature=0, stream=True
        ))  # fmt: skip
        streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        return {
            "chat": chat.model_dump(), "completion": completion.model_dump(),
            "embedding": [round(x, 4) for x in embedded.data[1].embedding[:8]],
            "dims": len(embedded.data[0].embedding),
            "response": response.output_text, "streamed": streamed, "kinds": sorted({e.type for e in events}),
        }  # fmt: skip

    through = await trio.to_thread.run_sync(with_sdk, url, url)
    straight_chat = await trio.to_thread.run_sync(with_sdk, direct("smollm2"), direct("embed"))
    assert same(through["chat"]) == same(straight_chat["chat"])
    assert same(through["completion"]) == same(straight_chat["completion"])
    assert through["chat"]["model"] == "smollm2"
    assert through["dims"] == 576 and through["embedding"] == straight_chat["embedding"]
    assert through["response"] and through["response"] == straight_chat["response"] == through["streamed"]
    assert "response.completed" in through["kinds"] and through["kinds"] == straight_chat["kinds"]


async def test_llama_cpps_own_routes_by_name_and_without_one(
    daemon: tuple[str, httpx.AsyncClient, Callable[[str], str]],
) -> None:
    url, client, direct = daemon
    await client.post(f"{url}/models/load", json={"model": "smollm2"})
    await poll_until(partial(loaded, client, url, "smollm2"), timeout_s=60)
    child = direct("smollm2")
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}
    for path, body in (
        ("/completion", {"model": "smollm2", "prompt": "The sky is", "n_predict": 5, "temperature": 0}),
        ("/tokenize", {"model": "smollm2", "content": "Hello world"}),
        ("/detokenize", {"model": "smollm2", "tokens": [19556, 905]}),
        ("/apply-template", chat),
        ("/v1/chat/completions/input_tokens", chat),
    ):
        through, straight = await both(client, url, child, "POST", path, json=body)
        assert through.status_code == straight.status_code == 200, (path, through.text)
        assert same(through.json()) == same(straight.json()), path
    props = (await client.get(f"{url}/props", params={"model": "smollm2"})).json()
    assert props["model_path"] == "smollm2" and props["total_slots"] == 1  # no server path leaves
    assert "/" not in json.dumps(props["model_path"])
    slots = await client.get(f"{url}/slots", params={"model": "smollm2"})
    assert slots.status_code == 200 and slots.json()[0]["n_ctx"] == 1024
    metrics = await client.get(f"{url}/metrics", params={"model": "smollm2"})
    assert "llamacpp:prompt_tokens_total" in metrics.text and "llama_sidecar_" not in metrics.text
    health = await client.get(f"{url}/upstream/smollm2/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # What the child cannot serve comes through with its own status and words.
    rerank = await client.post(
        f"{url}/v1/rerank", json={"model": "smollm2", "query": "q", "documents": ["a"]}
    )
    assert rerank.status_code == 501 and "Start it with `--reranking`" in rerank.json()["error"]["message"]
    infill = await client.post(
        f"{url}/infill", json={"model": "smollm2", "input_prefix": "def f(", "input_suffix": ")"}
    )
    assert (
        infill.status_code == 501
        and "Infill is not supported by this model" in infill.json()["error"]["message"]
    )
    heard = await client.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": "smollm2"},
        files={"file": ("a.wav", b"RIFF" + bytes(64))},
    )
    straight = await client.post(
        f"{child}/v1/audio/transcriptions",
        data={"model": "smollm2"},
        files={"file": ("a.wav", b"RIFF" + bytes(64))},
    )
    assert heard.status_code == straight.status_code != 200, heard.text
    assert heard.json()["error"]["message"].startswith(straight.json()["error"]["message"].rstrip("."))


async def loaded(client: httpx.AsyncClient, url: str, name: str) -> bool:
    listed = (await client.get(f"{url}/v1/models")).json()["data"]
    return next(e for e in listed if e["id"] == name)["status"]["value"] == "loaded"  # type: ignore[no-any-return]


async def test_router_mode_statuses_before_and_after_load_and_unload(
    daemon: tuple[str, httpx.AsyncClient, Callable[[str], str]],
) -> None:
    url, client, _direct = daemon
    statuses = {e["id"]: e["status"]["value"] for e in (await client.get(f"{url}/v1/models")).json()["data"]}
    assert statuses == {"smollm2": "unloaded", "embed": "unloaded"}
    assert (await client.post(f"{url}/models/load", json={"model": "embed"})).json() == {"success": True}
    await poll_until(partial(loaded, client, url, "embed"), timeout_s=60)
    listed = {e["id"]: e for e in (await client.get(f"{url}/models")).json()["data"]}
    assert listed["smollm2"]["status"]["value"] == "unloaded"
    args = listed["embed"]["status"]["args"]
    assert args[0] == "llama-server" and "--embedding" in args and args[args.index("--pooling") + 1] == "mean"
    assert not any("/" in arg for arg in listed["embed"]["status"]["args"])
    assert (await client.post(f"{url}/models/unload", json={"model": "embed"})).json() == {"success": True}
    assert not await loaded(client, url, "embed")


async def test_a_request_with_no_model_goes_to_the_only_model(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "512", "-t", "1"]}})
    async with (
        running_daemon(config, real_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=120) as client,
    ):
        answer = await client.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        assert answer.status_code == 200 and answer.json()["model"] == "smollm2", answer.text
        tokens = await client.post(f"{url}/tokenize", json={"content": "Hello"})
        assert tokens.status_code == 200 and tokens.json()["tokens"]
