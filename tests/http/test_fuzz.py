"""Bad input never reaches a 500: hypothesis throws malformed requests at the real HTTP surface."""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from tests.conftest import FAKE_SERVER, assert_no_children_since, make_config, our_children, routes_for

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/api/sidecars",
         "/api/sidecars/zz", "/api/sidecars/zz/restart", "/api/models/nope/load", "/api/stats", "/health",
         "/nowhere", "/v1/", "/api/models/%00/load", "/web/../../etc/passwd"]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=200),  # anything, invalid UTF-8 included
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["m", "nope", "", "m\x00"]) | JSON_VALUES},
        optional={
            "messages": JSON_VALUES,
            "stream": JSON_VALUES,
            "llama_flags": st.lists(
                st.sampled_from(["-c", "x", "--port", "1", "-fa", "--lora", "/etc/passwd", "\n"])
            )
            | JSON_VALUES,
        },
    ).map(lambda value: json.dumps(value).encode()),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),  # nested past the parser's limit
)


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """The per-test check does not fit here: this module's daemon and its children outlive each test.
    ``daemon_url`` checks instead that nothing is left once its daemon has stopped."""
    yield


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daemon in its own thread (hypothesis drives it from synchronous code); one for all examples."""
    before = our_children()
    tmp = tmp_path_factory.mktemp("fuzz")
    fake = tmp / "fake-llama-server"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    fake.chmod(0o755)
    (tmp / "m.gguf").write_text("{}")
    config = make_config(
        tmp,
        {"m": {"path": str(tmp / "m.gguf"), "allow_request_flags": True}},
        server={"max_body_bytes": 4096},
    )
    daemon = Daemon(routes_for(config, LlamaServerBinary(str(fake), "test")))
    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken]] = queue.Queue()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(daemon.run)
            started.put((url, trio.lowlevel.current_trio_token()))

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    url, token = started.get(timeout=30)
    yield url
    trio.from_thread.run_sync(daemon.request_shutdown, trio_token=token)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the daemon did not stop within 30 s"
    assert_no_children_since(before)  # every child it started is gone with it


REQUESTS = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        "path": st.sampled_from(PATHS),
        "body": BODIES,
        "flags_header": st.none() | st.text(max_size=30),
        "content_type": st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
        ),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_malformed_requests_get_a_4xx_in_the_openai_shape(daemon_url: str, request: dict[str, Any]) -> None:
    method, path, body = request["method"], request["path"], request["body"]
    content_type, flags_header = request["content_type"], request["flags_header"]
    headers: dict[bytes, bytes] = {b"content-type": content_type.encode()} if content_type else {}
    if flags_header is not None:
        headers[b"x-llama-flags"] = flags_header.encode()  # raw UTF-8 bytes, control characters and all
    try:
        response = httpx.request(method, daemon_url + path, content=body, headers=headers, timeout=30)
    except httpx.LocalProtocolError:
        return  # the client itself refused to send it (e.g. a header it cannot encode)
    assert response.status_code != 500, response.text
    if response.status_code >= 400 and path != "/health":
        error: Any = response.json()["error"]
        assert {"message", "type", "code"} <= set(error)
    assert response.status_code < 500 or response.status_code in (502, 503)


def test_oversized_body_is_413_and_the_daemon_keeps_serving(daemon_url: str) -> None:
    response = httpx.post(f"{daemon_url}/v1/chat/completions", content=b"x" * 5000, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    deep = b"[" * 100_000 + b"]" * 100_000
    assert httpx.post(f"{daemon_url}/v1/chat/completions", content=deep[:4000], timeout=30).status_code == 400
    assert httpx.get(f"{daemon_url}/health", timeout=30).status_code == 200
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}  # starts a child
    assert httpx.post(f"{daemon_url}/v1/chat/completions", json=chat, timeout=30).status_code == 200
