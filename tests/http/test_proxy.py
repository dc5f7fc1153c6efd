"""The HTTP surface end to end: a real hypercorn server on loopback, real or fake children."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from tests.conftest import (
    make_config,
    own_argv,
    pid_alive,
    poll_until,
    routes_for,
    running_daemon,
    wait_until,
)

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}


async def sidecars(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    response = await client.get(f"{url}/api/sidecars")
    assert response.status_code == 200
    return list(response.json()["sidecars"])


async def chat(client: httpx.AsyncClient, url: str, model: str) -> httpx.Response:
    return await client.post(f"{url}/v1/chat/completions", json={"model": model, **CHAT})


async def no_sidecars(client: httpx.AsyncClient, url: str) -> bool:
    return await sidecars(client, url) == []


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"])
    return dict(body["error"])


# -- the real llama-server with SmolLM2 ------------------------------------------------


@pytest.mark.real
async def test_real_chat_through_the_openai_client_plain_and_streaming(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(
        tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "2048"], "aliases": ["smol"]}}
    )
    async with running_daemon(config, real_binary) as (url, _daemon):
        client = openai_client(url)
        completion = await trio.to_thread.run_sync(
            partial(client.chat.completions.create, model="smol", **CHAT)
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0

        def stream() -> list[str]:
            chunks = client.chat.completions.create(model="smollm2", stream=True, **CHAT)  # type: ignore[call-overload]
            return [c.choices[0].delta.content or "" for c in chunks if c.choices]

        pieces = await trio.to_thread.run_sync(stream)
        assert len([p for p in pieces if p]) >= 2  # token by token, not one buffered blob
        assert "".join(pieces).strip()


@pytest.mark.real
async def test_real_capability_errors_say_how_to_enable_it_here_and_following_them_works(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    """llama-server's "start it with --embeddings" becomes where to put the flag here; the openai client
    sees llama-server's status, and a request that does what the message says gets its embedding."""
    config = make_config(
        tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "512"], "allow_request_flags": True}}
    )
    async with running_daemon(config, real_binary) as (url, _daemon):
        client = openai_client(url)

        def embed(**extra: Any) -> openai.types.CreateEmbeddingResponse:
            return client.embeddings.create(model="smollm2", input="hello", **extra)

        with pytest.raises(openai.APIStatusError) as refused:
            await trio.to_thread.run_sync(embed)
        assert refused.value.status_code == 501
        message = refused.value.body["message"]  # type: ignore[index]
        assert message == (
            "This server does not support embeddings. Start it with `--embeddings`. Here: add "
            '"--embeddings" to the flags of models.smollm2 in test-config, or send it per request as '
            '"llama_flags": ["--embeddings"], which this model allows.'
        )
        with pytest.raises(openai.BadRequestError, match=r'"llama_flags": \["--pooling", "mean"\]'):
            await trio.to_thread.run_sync(partial(embed, extra_body={"llama_flags": ["--embeddings"]}))
        enabled = {"llama_flags": ["--embeddings", "--pooling", "mean"]}
        embedded = await trio.to_thread.run_sync(partial(embed, extra_body=enabled))
        assert len(embedded.data[0].embedding) == 576  # SmolLM2-135M's hidden size


@pytest.mark.real
async def test_real_agents_share_a_child_when_flags_match_and_not_otherwise(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(
        tmp_path,
        {"smollm2": {"path": str(demo_model), "flags": ["-c", "2048"]}},
        agents={
            "coder": {"model": "smollm2", "flags": ["--ctx-size=1024"]},
            "reviewer": {"model": "smollm2", "flags": ["-c", "1024"]},
            "writer": {"model": "smollm2", "flags": ["-c", "1536"]},
        },
    )
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=60) as client:
        for agent in ("coder", "reviewer"):
            response = await chat(client, url, agent)
            assert response.status_code == 200, response.text
        shared = await sidecars(client, url)
        assert len(shared) == 1
        assert sorted(shared[0]["agents"]) == ["coder", "reviewer"]
        assert own_argv(shared[0]["argv"])[-2:] == ["--ctx-size", "1024"]  # the agent won over the model

        response = await chat(client, url, "writer")
        assert response.status_code == 200, response.text
        both = await sidecars(client, url)
        assert len(both) == 2
        assert len({s["pid"] for s in both}) == 2


@pytest.mark.real
async def test_real_pool_of_one_evicts_the_idle_child_for_another_model(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(
        tmp_path,
        {
            "a": {"path": str(demo_model), "flags": ["-c", "1024"]},
            "b": {"path": str(demo_model), "flags": ["-c", "2048"]},
        },
        pool={"max_sidecars": 1},
    )
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=60) as client:
        assert (await chat(client, url, "a")).status_code == 200
        [first] = await sidecars(client, url)
        assert (await chat(client, url, "b")).status_code == 200
        [second] = await sidecars(client, url)
        assert second["model"] == "b"
        assert not pid_alive(first["pid"])
        assert (await client.get(f"{url}/api/sidecars")).json()["evictions"] == 1


@pytest.mark.real
async def test_real_concurrent_cold_requests_cause_one_spawn(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model)}})
    async with running_daemon(config, real_binary) as (url, daemon), httpx.AsyncClient(timeout=120) as client:
        statuses: list[int] = []

        async def ask() -> None:
            body = {"model": "smollm2", **CHAT, "max_tokens": 2}
            statuses.append((await client.post(f"{url}/v1/chat/completions", json=body)).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(ask)
        assert statuses == [200] * 8
        [only] = await sidecars(client, url)
        assert only["restarts"] == 0  # exactly one spawn for this key
        assert daemon.pool is not None and daemon.pool._spawns == {only["key"]: 1}


@pytest.mark.real
async def test_real_sigkilled_child_is_noticed_and_respawned(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model)}})
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=60) as client:
        assert (await chat(client, url, "smollm2")).status_code == 200
        [before] = await sidecars(client, url)
        os.kill(before["pid"], signal.SIGKILL)
        await poll_until(partial(no_sidecars, client, url))  # the reaper removed it from the pool
        assert (await chat(client, url, "smollm2")).status_code == 200
        [after] = await sidecars(client, url)
        assert after["pid"] != before["pid"]
        assert after["restarts"] == 1


@pytest.mark.real
async def test_real_unloadable_model_fails_the_request_fast_with_stderr(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    await trio.Path(corrupt).write_bytes((await trio.Path(demo_model).read_bytes())[:4096])
    config = make_config(tmp_path, {"broken": {"path": str(corrupt)}})
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=60) as client:
        with trio.fail_after(30):
            response = await chat(client, url, "broken")
        assert response.status_code == 502
        error = error_of(response)
        assert error["code"] == "sidecar_spawn_failed"
        assert "exited while loading" in error["message"]
        assert "last stderr lines" in error["message"]
        assert await sidecars(client, url) == []


@pytest.mark.real
async def test_real_child_starts_with_every_normalised_form(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    forms = {
        "bare": ["-fa"],
        "one": ["-fa", "1"],
        "inline": ["--flash-attn=auto", "-ctk", "q8_0", "-ctv", "q8_0"],
    }
    config = make_config(
        tmp_path,
        {"smollm2": {"path": str(demo_model), "flags": ["-c", "1024", "-ngl", "all", "--spec-type", "none"]}},
        agents={name: {"model": "smollm2", "flags": flags} for name, flags in forms.items()},
        pool={"max_sidecars": 3},
    )
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=60) as client:
        for name in forms:
            response = await chat(client, url, name)
            assert response.status_code == 200, response.text  # no "unknown value for --flash-attn"
        argvs = {tuple(sorted(s["agents"])): s["argv"] for s in await sidecars(client, url)}
        assert sorted(argvs) == [("bare", "one"), ("inline",)]  # -fa and -fa 1 are one flag: one child
        assert all("--flash-attn" in argv and "-fa" not in argv for argv in argvs.values())
        shared = argvs[("bare", "one")]
        assert shared[shared.index("--flash-attn") + 1] == "on"


@pytest.mark.real
async def test_real_stopped_child_is_found_unhealthy_killed_and_replaced(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(
        tmp_path,
        {"smollm2": {"path": str(demo_model)}},
        llama_server={"health_interval_s": 0.2, "stop_grace_s": 0.5},
    )
    async with running_daemon(config, real_binary) as (url, _daemon), httpx.AsyncClient(timeout=60) as client:
        assert (await chat(client, url, "smollm2")).status_code == 200
        [before] = await sidecars(client, url)
        os.kill(before["pid"], signal.SIGSTOP)  # alive, but answers nothing
        await poll_until(partial(no_sidecars, client, url), timeout_s=20)
        assert not pid_alive(before["pid"])
        assert (await chat(client, url, "smollm2")).status_code == 200
        [after] = await sidecars(client, url)
        assert after["pid"] != before["pid"]


@pytest.mark.real
async def test_real_client_disconnect_cancels_the_generation(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model)}})
    async with running_daemon(config, real_binary) as (url, daemon), httpx.AsyncClient(timeout=60) as client:
        body = {"model": "smollm2", "stream": True, **CHAT, "max_tokens": 4000, "ignore_eos": True}
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break  # one token in, leave: 4000 tokens would take the child half a minute
        assert daemon.pool is not None
        [child] = daemon.pool.sidecars()

        async def child_idle() -> bool:
            slots = (await client.get(f"http://127.0.0.1:{child.port}/slots")).json()
            return not any(slot["is_processing"] for slot in slots)

        await poll_until(child_idle, timeout_s=10)
        assert daemon.pool.leases(child.key) == (0, 0)


# -- the fake, for faults and the HTTP contract ---------------------------------------------


@pytest.fixture
def fake_daemon_config(tmp_path: Path, fake_model: Callable[..., str]) -> Callable[..., Any]:
    def make(pool: dict[str, Any] | None = None, **behaviours: dict[str, Any]) -> Any:
        models = {name: {"path": fake_model(name, **behaviour)} for name, behaviour in behaviours.items()}
        return make_config(tmp_path, models, pool=pool)

    return make


async def test_errors_have_the_openai_shape(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={}, n={})  # two models, no default: a request must name one
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient() as client:
        unknown = await chat(client, url, "nope")
        assert unknown.status_code == 404 and "known models: m, n" in error_of(unknown)["message"]
        bad_json = await client.post(f"{url}/v1/chat/completions", content=b"{not json")
        assert bad_json.status_code == 400 and error_of(bad_json)["code"] == "invalid_json"
        no_model = await client.post(f"{url}/v1/completions", json={"prompt": "x"})
        assert no_model.status_code == 400 and error_of(no_model)["code"] == "missing_model"
        assert "names no model" in error_of(no_model)["message"] and "m, n" in error_of(no_model)["message"]
        not_a_name = await client.post(f"{url}/v1/completions", json={"model": 5, "prompt": "x"})
        assert not_a_name.status_code == 400 and "'model' must be a string" in error_of(not_a_name)["message"]
        not_object = await client.post(f"{url}/v1/embeddings", json=["model", "m"])
        assert not_object.status_code == 400
        wrong_method = await client.get(f"{url}/v1/chat/completions")
        assert wrong_method.status_code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"
        no_route = await client.get(f"{url}/v2/nothing")
        assert no_route.status_code == 404 and error_of(no_route)["code"] == "not_found"
        assert (await client.delete(f"{url}/api/sidecars/0123")).status_code == 404
        assert (await client.get(f"{url}/health")).json()["status"] == "ok"
        assert await sidecars(client, url) == []  # none of that spawned anything


async def test_models_lists_agents_models_and_aliases_without_spawning(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = make_config(
        tmp_path,
        {"m": {"path": fake_model(), "aliases": ["em"]}},
        agents={"coder": {"model": "m", "flags": ["-c", "512"]}},
    )
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient() as client:
        listed = (await client.get(f"{url}/v1/models")).json()
        kinds = {entry["id"]: entry["kind"] for entry in listed["data"]}
        assert kinds == {"m": "model", "em": "alias", "coder": "agent"}
        assert await sidecars(client, url) == []


async def test_responses_pass_through_untouched_and_streams_unbuffered(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={"tokens": 3, "token_delay_s": 0.3})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        plain = await chat(client, url, "m")
        assert plain.status_code == 200
        assert plain.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        assert "access-control-allow-origin" not in plain.headers  # the child's CORS header is not ours
        arrivals: list[float] = []
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"content"' in line:  # a token, not the final timings
                    arrivals.append(trio.current_time())
        assert len(arrivals) == 3
        assert arrivals[1] - arrivals[0] > 0.2  # each chunk arrived when the child sent it


async def test_child_dying_mid_stream_ends_the_stream_with_an_error_event_then_respawns(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={"tokens": 5, "crash_after_chunks": 2})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        events: list[Any] = []
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}
        ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert len(events) == 3
        assert events[-1]["error"]["code"] == "sidecar_failed"
        await poll_until(partial(no_sidecars, client, url))
        again = await chat(client, url, "m")
        assert again.status_code == 200
        [respawned] = await sidecars(client, url)
        assert respawned["restarts"] == 1


async def test_child_dying_before_it_answers_is_a_502(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={"crash_on_request": True})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        response = await chat(client, url, "m")
        assert response.status_code == 502
        error = error_of(response)
        assert error["code"] == "sidecar_failed" and "did not answer" in error["message"]
        await poll_until(partial(no_sidecars, client, url))  # reaped; the next request would respawn


async def test_per_request_flags_select_their_own_sidecar(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = make_config(
        tmp_path,
        {
            "open": {"path": fake_model("open"), "allow_request_flags": True},
            "closed": {"path": fake_model("closed")},
        },
        llama_server={"base_args": ["-c", "4096"]},
    )
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        plain = await chat(client, url, "open")
        body = {"model": "open", **CHAT, "llama_flags": ["--ctx-size=8192", "-fa"]}
        flagged = await client.post(f"{url}/v1/chat/completions", json=body)
        assert flagged.status_code == 200, flagged.text
        assert "llama_flags" not in flagged.json()["request_keys"]  # ours; the child never saw it
        assert "llama_flags" not in plain.json()["request_keys"]
        header = {"X-Llama-Flags": "--flash-attn 'on' -c 8192"}
        same = await client.post(f"{url}/v1/chat/completions", json={"model": "open", **CHAT}, headers=header)
        assert same.status_code == 200
        children = await sidecars(client, url)
        assert len(children) == 2  # the header spelled the same flags: the same child
        argvs = sorted((child["argv"] for child in children), key=len)
        assert "8192" not in argvs[0] and "4096" in argvs[0]
        assert own_argv(argvs[1])[-4:] == ["--ctx-size", "8192", "--flash-attn", "on"]
        assert "4096" not in argvs[1]  # the request's explicit -c replaced the inherited one

        refused = await client.post(
            f"{url}/v1/chat/completions", json={"model": "closed", **CHAT, "llama_flags": ["-c", "1"]}
        )
        assert (
            refused.status_code == 400 and "does not accept per-request flags" in error_of(refused)["message"]
        )
        for bad, message in (
            (["--port", "1"], "--port is set by the supervisor"),
            (["--lora", "/etc/passwd"], "names a file on the server"),
            (["-c", "lots"], "expected an integer"),
            ("-c 1", "must be a list of strings"),
        ):
            response = await client.post(
                f"{url}/v1/chat/completions", json={"model": "open", **CHAT, "llama_flags": bad}
            )
            assert response.status_code == 400 and message in error_of(response)["message"], response.text
            assert error_of(response)["code"] == "invalid_llama_flags"
        unquoted = await client.post(
            f"{url}/v1/chat/completions", json={"model": "open", **CHAT}, headers={"X-Llama-Flags": "-c '1"}
        )
        assert unquoted.status_code == 400 and "not valid shell quoting" in error_of(unquoted)["message"]
        assert len(await sidecars(client, url)) == 2  # no refused request spawned anything


async def test_crash_loop_answers_503_with_retry_after_and_shows_in_the_admin_api(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={"exit_during_load": 5})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        statuses = [(await chat(client, url, "m")).status_code for _ in range(3)]
        assert statuses == [502, 502, 502]
        backing_off = await chat(client, url, "m")
        assert backing_off.status_code == 503 and int(backing_off.headers["retry-after"]) >= 1
        assert error_of(backing_off)["code"] == "sidecar_backing_off"
        assert "exit code 5" in error_of(backing_off)["message"]
        [entry] = (await client.get(f"{url}/api/sidecars")).json()["backing_off"]
        assert entry["failures"] == 3 and "fake: failed to load model" in entry["stderr_tail"]


async def test_a_silent_child_is_cut_off_after_the_idle_timeout(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = make_config(
        tmp_path,
        {
            "slow": {"path": fake_model("slow", reply_delay_s=30)},
            "stalls": {"path": fake_model("stalls", tokens=3, token_delay_s=30)},
        },
        llama_server={"upstream_idle_timeout_s": 0.5},
    )
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(10):
            silent = await chat(client, url, "slow")
        assert silent.status_code == 504 and error_of(silent)["code"] == "sidecar_timeout"
        assert "sent nothing for 0.5 s" in error_of(silent)["message"]
        events = []
        with trio.fail_after(10):
            body = {"model": "stalls", "stream": True, **CHAT}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                events = [
                    json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")
                ]
        assert len(events) == 2  # the first token, then the error when the child went quiet
        assert events[-1]["error"]["code"] == "sidecar_timeout"


async def test_a_busy_child_queues_then_refuses_with_429(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(pool={"max_queue": 1}, m={"slots": 1, "tokens": 10, "token_delay_s": 0.05})
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        results: dict[str, int] = {}

        async def queued() -> None:
            results["queued"] = (await chat(client, url, "m")).status_code

        body = {"model": "m", "stream": True, **CHAT}
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as first:
            lines = first.aiter_lines()
            await lines.__anext__()  # the child's one slot is taken
            [child] = await sidecars(client, url)
            assert child["slots"] == 1  # read from the child's own /props
            async with trio.open_nursery() as nursery:
                nursery.start_soon(queued)
                assert daemon.pool is not None
                await wait_until(lambda: daemon.pool.leases(daemon.pool.sidecars()[0].key)[1] == 1)  # type: ignore[union-attr]
                refused = await chat(client, url, "m")
                assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
                assert error_of(refused)["code"] == "sidecar_overloaded"
                rest = [line async for line in lines]
            assert "data: [DONE]" in rest
        assert results == {"queued": 200}  # served as soon as the slot was free


async def test_client_leaving_mid_spawn_does_not_stop_the_spawn(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={"load_s": 1.0})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient() as client:
        with trio.move_on_after(0.3):
            await chat(client, url, "m")
            pytest.fail("the request should still be waiting for the spawn")

        async def one_ready() -> bool:
            return [s["state"] for s in await sidecars(client, url)] == ["ready"]

        await poll_until(one_ready)
        [child] = await sidecars(client, url)
        assert child["in_flight"] == 0


async def test_disconnect_mid_stream_releases_the_lease(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={"tokens": 50, "token_delay_s": 0.05})
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}
        ) as r:
            async for _line in r.aiter_lines():
                break  # leave after the first line
        assert daemon.pool is not None
        [child] = daemon.pool.sidecars()
        await wait_until(lambda: daemon.pool.leases(child.key) == (0, 0))  # type: ignore[union-attr]


async def test_busy_child_is_not_killed_and_the_wait_for_room_ends_in_503(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(
        pool={"max_sidecars": 1, "capacity_wait_s": 0.5}, busy={"tokens": 40, "token_delay_s": 0.05}, other={}
    )
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json={"model": "busy", "stream": True, **CHAT}
        ) as r:
            lines = r.aiter_lines()
            await lines.__anext__()  # the busy child is serving now
            refused = await chat(client, url, "other")
            assert refused.status_code == 503
            assert refused.headers["retry-after"].isdigit()
            assert error_of(refused)["code"] == "pool_busy"
            rest = [line async for line in lines]
        assert "data: [DONE]" in rest  # the busy child finished its stream untouched
        assert daemon.pool is not None and daemon.pool.evictions == 0


async def test_waiting_request_gets_the_child_once_the_busy_one_is_idle(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(
        pool={"max_sidecars": 1}, busy={"tokens": 10, "token_delay_s": 0.05}, other={}
    )
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        results: dict[str, int] = {}

        async def stream_busy() -> None:
            body = {"model": "busy", "stream": True, **CHAT}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                results["busy_lines"] = len(
                    [line async for line in r.aiter_lines() if line.startswith("data:")]
                )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_busy)
            assert daemon.pool is not None
            await wait_until(lambda: any(daemon.pool.leases(s.key)[0] for s in daemon.pool.sidecars()))  # type: ignore[union-attr]
            other = await chat(client, url, "other")
            results["other"] = other.status_code
        assert results == {"busy_lines": 12, "other": 200}  # 10 tokens, timings, [DONE]: nothing cut


async def test_delete_stops_a_sidecar(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(m={})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        assert (await chat(client, url, "m")).status_code == 200
        [child] = await sidecars(client, url)
        response = await client.delete(f"{url}/api/sidecars/{child['key']}")
        assert response.status_code == 200 and response.json() == {"stopped": child["key"], "model": "m"}
        assert not pid_alive(child["pid"])
        assert await sidecars(client, url) == []


async def test_shutdown_stops_every_child(
    fake_daemon_config: Callable[..., Any], fake_binary: LlamaServerBinary
) -> None:
    config = fake_daemon_config(a={}, b={})
    daemon = Daemon(routes_for(config, fake_binary))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(timeout=30) as client:
            for name in ("a", "b"):
                assert (await chat(client, url, name)).status_code == 200
            pids = [s["pid"] for s in await sidecars(client, url)]
        daemon.request_shutdown()
    assert len(pids) == 2
    assert not any(pid_alive(pid) for pid in pids)
