"""Every llama-server route through the one way in (apiroutes), on the fake llama-server.

The fake answers each route in llama-server's shape and says what reached it
(path with query, the body's keys, a multipart body's byte count), so routing,
defaults, limits, keys and router-mode management are shown end to end over a
real hypercorn server on loopback. The real binary's answers are compared in
test_api_real.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from orchestrator import apiroutes
from orchestrator.apiroutes import ModelIn
from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, poll_until, running_daemon

API_KEY = "k" * 20
ADMIN_KEY = "a" * 20


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


async def raw_get(url: str, target: str) -> tuple[int, str]:
    """GET ``target`` exactly as written (httpx would resolve its dot segments first)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
        received = b""
        while piece := await stream.receive_some(65536):
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    """A request body with no Content-Length (chunked)."""
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part


def sample_request(route: apiroutes.ApiRoute, model: str | None, padding: int = 100) -> dict[str, Any]:
    """httpx arguments for one request on ``route`` naming ``model`` (None: none)."""
    if route.model_in is ModelIn.QUERY:
        return {"params": {} if model is None else {"model": model}}
    if route.model_in is ModelIn.FORM:
        data = {} if model is None else {"model": model}
        return {"data": data, "files": {"file": ("a.wav", b"RIFF" + b"\0" * padding, "audio/wav")}}
    text = "h" * padding
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "prompt": text, "input": text}
    if model is not None:
        body["model"] = model
    return {"json": body}


@pytest.fixture
def two_models(tmp_path: Path, fake_model: Callable[..., str]) -> Callable[..., Any]:
    def make(**server: Any) -> Any:
        models = {
            "m": {"path": fake_model("m", fim=True), "flags": ["--reranking"], "aliases": ["em"]},
            "n": {"path": fake_model("n")},
        }
        return make_config(
            tmp_path, models, agents={"coder": {"model": "m", "flags": ["-c", "512"]}}, server=server
        )

    return make


@pytest.fixture
async def daemon_of_two(
    two_models: Callable[..., Any], fake_binary: LlamaServerBinary
) -> AsyncIterator[tuple[str, httpx.AsyncClient, Any]]:
    async with (
        running_daemon(two_models(), fake_binary) as (url, daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        yield url, client, daemon


async def test_every_route_reaches_the_named_child_with_its_path_and_query(
    daemon_of_two: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, client, daemon = daemon_of_two
    for (method, path), route in sorted(apiroutes.ROUTES.items()):
        request = sample_request(route, "em")
        if method == "GET":
            request["params"]["extra"] = "1"
        answer = await client.request(method, f"{url}{path}", **request)
        assert answer.status_code == 200, (path, answer.text)
        if path == "/metrics":  # the child's own series, text
            assert "llamacpp:prompt_tokens_total" in answer.text
            continue
        if path in ("/slots", "/lora-adapters"):
            assert isinstance(answer.json(), list)
            continue
        reached = answer.json()
        assert "path" in reached, (path, reached)
        expected = f"{path}?model=em&extra=1" if method == "GET" else path
        assert reached["path"] == expected, reached
        if route.model_in is ModelIn.BODY and "request_keys" in reached:
            assert "model" in reached["request_keys"]  # the body goes as it came
    assert [s.spec.model for s in daemon.pool.sidecars()] == ["m"]  # em is m: one child for all of it


async def test_a_request_naming_no_model_goes_to_the_default_and_else_gets_400_listing_the_names(
    two_models: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    async with (
        running_daemon(two_models(), fake_binary) as (url, daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        for (method, path), route in sorted(apiroutes.ROUTES.items()):
            if path == "/metrics":
                continue  # without ?model= it is the daemon's own
            refused = await client.request(method, f"{url}{path}", **sample_request(route, None))
            assert refused.status_code == 400, (path, refused.text)
            error = error_of(refused)
            assert error["code"] == "missing_model" and "coder, em, m, n" in error["message"], error
        assert daemon.pool.sidecars() == []
    async with (
        running_daemon(two_models(default_model="coder"), fake_binary) as (url, daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        for (method, path), route in sorted(apiroutes.ROUTES.items()):
            if path == "/metrics":
                continue
            answered = await client.request(method, f"{url}{path}", **sample_request(route, None))
            assert answered.status_code == 200, (path, answered.text)
        assert [s.spec.names for s in daemon.pool.sidecars()] == [("coder",)]  # the agent's own child
        # Our own /metrics answers without a model; the props of the child say the name, not a path.
        assert (await client.get(f"{url}/metrics")).text.startswith("# HELP")
        props = (await client.get(f"{url}/props")).json()
        assert props["model_path"] == "coder" and props["model_alias"] == "coder"


async def test_unknown_names_oversized_bodies_and_slot_actions_are_refused_on_every_route(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, server={"max_body_bytes": 4096})
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        for (method, path), route in sorted(apiroutes.ROUTES.items()):
            unknown = await client.request(method, f"{url}{path}", **sample_request(route, "nope"))
            assert unknown.status_code == 404, (path, unknown.text)
            assert "known models: m" in error_of(unknown)["message"]
            if method == "POST":
                oversized = httpx.Request(method, f"{url}{path}", **sample_request(route, "m", padding=5000))
                large = await client.send(oversized)
                assert large.status_code == 413 and error_of(large)["code"] == "body_too_large", path
        for action in ("save", "restore", "erase"):
            refused = await client.post(f"{url}/slots/0?action={action}", json={"filename": "x.bin"})
            assert refused.status_code == 403 and error_of(refused)["code"] == "slot_action_refused"
        assert (await client.put(f"{url}/v1/chat/completions")).status_code == 405
        assert daemon.pool.sidecars() == []  # nothing of that reached a child
        # A body with no Content-Length is counted as it comes (a multipart one as it streams on).
        for (method, path), route in sorted(apiroutes.ROUTES.items()):
            if method == "POST":
                body = httpx.Request(method, url, **sample_request(route, "m", padding=5000))
                chunked = await client.post(
                    f"{url}{path}",
                    content=pieces(body.read()[:3000], body.read()[3000:]),
                    headers={"content-type": body.headers["content-type"]},
                )
                assert chunked.status_code == 413 and error_of(chunked)["code"] == "body_too_large", path


async def test_a_multipart_body_is_streamed_to_the_child_named_in_its_form(
    daemon_of_two: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, client, _daemon = daemon_of_two
    audio = os.urandom(3_000_000)  # larger than one piece of the body
    answer = await client.post(
        f"{url}/v1/audio/transcriptions", data={"model": "n", "language": "en"},
        files={"file": ("talk.wav", audio, "audio/wav")},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["file_bytes"] == len(audio) and answer.json()["model"] == "n"

    form = httpx.Request("POST", url, data={"model": "n"}, files={"file": ("t.wav", audio)})
    body = form.read()
    in_pieces = pieces(*(body[start : start + 65536] for start in range(0, len(body), 65536)))
    answer = await client.post(  # no Content-Length: streamed on chunked
        f"{url}/audio/transcriptions",
        content=in_pieces,
        headers={"content-type": form.headers["content-type"]},
    )
    assert answer.status_code == 200 and answer.json()["file_bytes"] == len(audio), answer.text

    no_model = await client.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")})
    assert no_model.status_code == 400 and error_of(no_model)["code"] == "missing_model"
    not_multipart = await client.post(f"{url}/v1/audio/transcriptions", json={"model": "n"})
    assert not_multipart.status_code == 400 and error_of(not_multipart)["code"] == "invalid_multipart"


async def test_upstream_passes_any_method_to_the_named_child_and_cannot_leave_it(
    daemon_of_two: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, client, _daemon = daemon_of_two
    health = await client.get(f"{url}/upstream/coder/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    echoed = await client.put(
        f"{url}/upstream/em/some/new/route?x=1",
        content=b"abc",
        headers={"authorization": "Bearer secret-key"},
    )
    reached = echoed.json()
    assert (
        reached["method"] == "PUT" and reached["path"] == "/some/new/route?x=1" and reached["body_bytes"] == 3
    )
    assert "authorization" not in reached["headers"]  # our credentials stay here
    answered = await client.get(f"{url}/upstream/em/props")
    assert answered.json()["model_path"].endswith("m.gguf")  # as it is: /upstream is the raw child
    for path in ("/upstream/../api/config", "/upstream/em/../../etc/passwd", "/upstream/em/%2e%2e/x",
                 "/upstream/em/a/%2E%2E/%2E%2E/x", "/upstream//health", "/upstream/"):  # fmt: skip
        status, answer = await raw_get(url, path)
        assert status == 404, (path, answer)
    assert (await client.get(f"{url}/upstream/nope/health")).status_code == 404


async def test_capability_errors_of_every_rerank_spelling_and_infill_say_how_to_enable_them(
    daemon_of_two: tuple[str, httpx.AsyncClient, Any],
) -> None:
    url, client, _daemon = daemon_of_two
    for path in ("/v1/rerank", "/rerank", "/reranking", "/v1/reranking"):
        ranked = await client.post(f"{url}{path}", json={"model": "m", "query": "q", "documents": ["a", "b"]})
        assert [r["index"] for r in ranked.json()["results"]] == [0, 1], path
        refused = await client.post(f"{url}{path}", json={"model": "n", "query": "q", "documents": ["a"]})
        assert refused.status_code == 501
        assert error_of(refused)["message"].endswith(
            'Start it with `--reranking`. Here: add "--reranking" to the flags of models.n in test-config.'
        )
    assert (
        await client.post(f"{url}/infill", json={"model": "m", "input_prefix": "def "})
    ).status_code == 200
    no_fim = await client.post(f"{url}/infill", json={"model": "n", "input_prefix": "def "})
    assert no_fim.status_code == 501 and "fill-in-the-middle tokens" in error_of(no_fim)["message"]


async def test_keys_open_the_inference_routes_with_api_keys_and_the_rest_with_admin_keys(
    two_models: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = two_models(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])
    api, admin = {"authorization": f"Bearer {API_KEY}"}, {"x-api-key": ADMIN_KEY}
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        for (method, path), route in sorted(apiroutes.ROUTES.items()):
            request = sample_request(route, "m")
            assert (await client.request(method, f"{url}{path}", **request)).status_code == 401, path
            wanted = admin if path in ("/slots", "/metrics") else api
            allowed = await client.request(method, f"{url}{path}", headers=wanted, **request)
            assert allowed.status_code == 200, (path, allowed.text)
        for path in ("/models", "/v1/models"):
            assert (await client.get(f"{url}{path}")).status_code == 401
            assert (await client.get(f"{url}{path}", headers=api)).status_code == 200
        assert (await client.get(f"{url}/upstream/m/health", headers=api)).status_code == 401
        assert (await client.get(f"{url}/upstream/m/health", headers=admin)).status_code == 200
        assert (await client.get(f"{url}/slots?model=m", headers=api)).status_code == 401
        assert (await client.get(f"{url}/v1/health")).status_code == 200  # open, like /health


async def test_router_mode_lists_statuses_loads_and_unloads_in_llama_cpps_shape(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    models = {
        "m": {"path": fake_model("m", load_s=0.5), "flags": ["-c", "512"]},
        "broken": {"path": fake_model("broken", exit_during_load=1)},
    }
    config = make_config(tmp_path, models, pool={"crash_loop": {"failures": 5}})
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:

        async def status(name: str) -> dict[str, Any]:
            listed = (await client.get(f"{url}/models")).json()["data"]
            return next(entry for entry in listed if entry["id"] == name)["status"]  # type: ignore[no-any-return]

        assert (await client.get(f"{url}/v1/models")).json() == (await client.get(f"{url}/models")).json()
        entry = next(e for e in (await client.get(f"{url}/models")).json()["data"] if e["id"] == "m")
        assert entry["status"] == {
            "value": "unloaded",
            "args": ["llama-server", "--cache-ram", "1024", "--ctx-size", "512"],
        }
        assert entry["architecture"] == {"input_modalities": ["text"], "output_modalities": ["text"]}
        assert (
            entry["kind"] == "model"
            and entry["aliases"] == ["m"]
            and not any("/" in a for a in entry["status"]["args"])
        )
        assert (await client.post(f"{url}/models/load", json={"model": "m"})).json() == {"success": True}
        assert (await status("m"))["value"] == "loading"  # answered at once, as llama.cpp's router does
        again = await client.post(f"{url}/models/load", json={"model": "m"})
        assert again.status_code == 400 and error_of(again)["code"] == "model_already_running"

        async def loaded() -> bool:
            return (await status("m"))["value"] == "loaded"

        await poll_until(loaded, timeout_s=20)
        assert (await client.post(f"{url}/models/unload", json={"model": "m"})).json() == {"success": True}
        assert (await status("m"))["value"] == "unloaded" and daemon.pool.sidecars() == []
        not_running = await client.post(f"{url}/models/unload", json={"model": "m"})
        assert not_running.status_code == 400 and error_of(not_running)["code"] == "model_not_running"

        assert (await client.post(f"{url}/models/load", json={"model": "broken"})).status_code == 200

        async def failed() -> bool:
            return (await status("broken")).get("failed") is True

        await poll_until(failed, timeout_s=20)
        assert (await status("broken"))["exit_code"] == 1
        for body in ({}, {"model": ""}, {"model": 3}):
            assert error_of(await client.post(f"{url}/models/load", json=body))["code"] == "missing_model"
        assert (await client.post(f"{url}/models/load", json={"model": "nope"})).status_code == 404


async def test_a_streamed_chat_that_waits_for_a_load_sees_it_as_reasoning_then_the_answer(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    models = {
        "slow": {"path": fake_model("slow", load_s=2.5), "send_loading_state": True},
        "quiet": {"path": fake_model("quiet", load_s=0.2)},
        "broken": {"path": fake_model("broken", load_s=1.2, exit_during_load=2), "send_loading_state": True},
    }
    config = make_config(tmp_path, models)
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:

        async def events(model: str) -> list[dict[str, Any]]:
            async with client.stream(
                "POST", f"{url}/v1/chat/completions", json={"model": model, **chat}
            ) as answer:
                assert answer.status_code == 200 and answer.headers["content-type"] == "text/event-stream"
                text = (await answer.aread()).decode()
            return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]

        shown = await events("slow")
        reasoning = "".join(
            e["choices"][0]["delta"].get("reasoning_content", "") for e in shown if e.get("choices")
        )
        assert reasoning.startswith("Loading slow…") and " 1 s…" in reasoning and "ready after" in reasoning
        answer = "".join(e["choices"][0]["delta"].get("content", "") for e in shown if e.get("choices"))
        assert answer == "tok0 tok1 tok2 tok3 "
        again = await events("slow")  # ready now: no loading shown
        assert not any("reasoning_content" in e["choices"][0]["delta"] for e in again if e.get("choices"))
        assert not any(
            "reasoning_content" in e["choices"][0]["delta"] for e in await events("quiet") if e.get("choices")
        )
        failed = await events("broken")
        assert failed[-1]["error"]["code"] == "sidecar_spawn_failed"
        assert "exited while loading" in failed[-1]["error"]["message"]
