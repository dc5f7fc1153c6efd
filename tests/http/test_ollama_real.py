"""Ollama's API through us, with the official `ollama` client, the real llama-server and SmolLM2."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import ollama
import pytest
import trio

from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, poll_until, running_daemon
from tests.supervisor.test_metrics import samples, value

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def everything(url: str) -> dict[str, object]:
    """Every call a tool that only knows Ollama makes; runs in a worker thread (the client is sync)."""
    client = ollama.Client(host=url)
    seen: dict[str, object] = {"list": [m.model for m in client.list().models]}
    chat = client.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hi."}],
        options={"num_predict": 8, "temperature": 0},
    )
    seen["chat"] = chat
    seen["streamed"] = list(
        client.chat(
            model="smollm2",
            messages=[{"role": "user", "content": "Count to five."}],
            stream=True,
            options={"num_predict": 8, "temperature": 0},
        )
    )
    seen["generate"] = client.generate(model="smollm2", prompt="Once upon a time", options={"num_predict": 6})
    same = [
        client.generate(
            model="smollm2", prompt="Once upon", options={"num_predict": 12, "temperature": 1.0, "seed": 42}
        ).response
        for _ in range(2)
    ]
    seen["same_seed"] = same
    seen["json"] = client.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "Give a person as JSON."}],
        format=PERSON,
        options={"num_predict": 64, "temperature": 0},
    ).message.content
    seen["ps"] = client.ps()
    seen["show"] = client.show("smollm2")
    seen["embed"] = client.embed(model="embed", input=["hello", "world"])
    seen["embeddings"] = client.embeddings(model="embed", prompt="hello")
    for call, name in (
        (partial(client.pull, "llama3"), "pull"),
        (partial(client.chat, model="nope", messages=[]), "nope"),
    ):
        try:
            call()
        except ollama.ResponseError as error:
            seen[name] = (error.status_code, error.error)
    client.generate(model="smollm2", prompt="Bye.", options={"num_predict": 2}, keep_alive=0)
    return seen


@pytest.mark.real
async def test_the_official_ollama_client_against_the_daemon(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    models = {
        "smollm2": {"path": str(demo_model), "flags": ["-c", "2048"]},
        "embed": {"path": str(demo_model), "flags": ["-c", "512", "--embeddings", "--pooling", "mean"]},
    }
    config = make_config(tmp_path, models)
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        seen = await trio.to_thread.run_sync(everything, url)

        assert seen["list"] == ["smollm2", "embed"]
        chat = seen["chat"]
        assert isinstance(chat, ollama.ChatResponse)
        assert chat.done and chat.message.content and chat.prompt_eval_count and chat.total_duration
        # The child's own count: all 8 when cut at num_predict, fewer when the model stopped by itself.
        assert chat.eval_count == 8 if chat.done_reason == "length" else 0 < (chat.eval_count or 0) < 8
        streamed = seen["streamed"]
        assert isinstance(streamed, list) and len(streamed) >= 3
        assert [part.done for part in streamed] == [False] * (len(streamed) - 1) + [True]
        assert "".join(part.message.content or "" for part in streamed).strip()
        last = streamed[-1]
        assert last.eval_count == 8 if last.done_reason == "length" else 0 < (last.eval_count or 0) < 8
        generated = seen["generate"]
        assert isinstance(generated, ollama.GenerateResponse) and generated.response and generated.done
        first, second = seen["same_seed"]  # type: ignore[misc]
        assert first == second and first  # same seed, same answer
        person = json.loads(str(seen["json"]))  # the answer follows the schema
        assert isinstance(person["name"], str) and isinstance(person["age"], int)
        ps = seen["ps"]
        assert isinstance(ps, ollama.ProcessResponse)
        assert {m.model for m in ps.models} == {"smollm2"} and ps.models[0].context_length == 2048
        show = seen["show"]
        assert isinstance(show, ollama.ShowResponse) and show.details is not None
        assert (show.details.family, show.details.parameter_size, show.details.quantization_level) == (
            "llama",
            "135M",
            "Q4_1",
        )
        assert show.template and "--ctx-size" in (show.parameters or "")
        embedded = seen["embed"]
        assert isinstance(embedded, ollama.EmbedResponse)
        assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 576
        assert len(seen["embeddings"].embedding) == 576  # type: ignore[attr-defined]
        assert seen["pull"][0] == 400 and "configuration" in seen["pull"][1]  # type: ignore[index]
        assert seen["nope"][0] == 404 and "smollm2" in seen["nope"][1]  # type: ignore[index]

        async def smollm2_stopped() -> bool:  # keep_alive=0: stopped once its answer was done
            sidecars = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
            return [s["model"] for s in sidecars] == ["embed"]

        await poll_until(smollm2_stopped)
        scraped = samples((await client.get(f"{url}/metrics")).text)
        ok = {"model": "smollm2", "agent": "smollm2", "code": "200"}
        assert value(scraped, "llama_sidecar_requests_total", route="/api/chat", **ok) == 3
        assert value(scraped, "llama_sidecar_requests_total", route="/api/generate", **ok) == 4
