"""API and admin keys: every protected route and feed refuses without a key and opens with one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from orchestrator.auth import AccessPolicy, exposure_problem, presented_key
from orchestrator.bundled import LlamaServerBinary
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from tests.conftest import make_config, running_daemon

API_KEY = "sk-api-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_policy() -> None:
    both = AccessPolicy((API_KEY,), (ADMIN_KEY,))
    assert both.allows("/v1/chat/completions", API_KEY) and both.allows("/v1/models", ADMIN_KEY)
    assert not both.allows("/v1/models", None) and not both.allows("/v1/models", "sk-wrong-0123456789")
    assert both.allows("/api/sidecars", ADMIN_KEY) and not both.allows("/api/sidecars", API_KEY)
    assert both.allows("/health", None) and both.allows("/", None) and both.allows("/web/app.js", None)
    api_only = AccessPolicy((API_KEY,), ())
    assert not api_only.allows("/api/sidecars", None) and api_only.allows(
        "/ws/events", API_KEY
    )  # never more open
    assert AccessPolicy().allows("/api/sidecars", None)  # no keys configured: loopback default, open


def test_presented_key_forms() -> None:
    assert presented_key(f"Bearer {API_KEY}", None, None) == API_KEY
    assert presented_key(f"bearer  {API_KEY} ", None, None) == API_KEY
    assert presented_key(None, API_KEY, None) == API_KEY
    assert presented_key("Basic abc", None, API_KEY) == API_KEY
    assert presented_key(None, None, None) is None


@pytest.mark.parametrize(
    ("host", "policy", "refused"),
    [
        ("127.0.0.1", AccessPolicy(), False),
        ("::1", AccessPolicy(), False),
        ("localhost", AccessPolicy(), False),
        ("0.0.0.0", AccessPolicy(), True),
        ("0.0.0.0", AccessPolicy((API_KEY,), ()), True),
        ("192.168.1.5", AccessPolicy((API_KEY,), (ADMIN_KEY,)), False),
        ("myhost.lan", AccessPolicy(), True),
    ],
)
def test_exposure(host: str, policy: AccessPolicy, refused: bool) -> None:
    assert (exposure_problem(host, policy) is not None) == refused


def test_serve_refuses_a_network_address_without_keys(
    tmp_path: Path, fake_model: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.toml").write_text(f'[server]\nhost = "0.0.0.0"\n[models.m]\npath = "{fake_model()}"\n')
    assert main(["serve", "--config", str(tmp_path / "c.toml")]) == 1
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 (not loopback) without server.api_keys and server.admin_keys" in err
    assert "--insecure" in err


def test_bad_keys_are_reported_without_showing_them(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[server]\napi_keys = ["short-secret"]\nadmin_keys = "sk-not-a-list-0123456789"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "c.toml")
    assert len(raised.value.problems) == 2
    assert "short-secret" not in str(raised.value) and "sk-not-a-list" not in str(raised.value)


@pytest.fixture
def keyed_config(tmp_path: Path, fake_model: Callable[..., str]) -> Any:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    server = dataclasses.replace(config.server, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,))
    return dataclasses.replace(config, server=server)


async def test_every_protected_route_refuses_without_a_key_and_opens_with_one(
    keyed_config: Any, fake_binary: LlamaServerBinary
) -> None:
    async with (
        running_daemon(keyed_config, fake_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        api = {"authorization": f"Bearer {API_KEY}"}
        admin = {"x-api-key": ADMIN_KEY}
        refused = await client.post(f"{url}/v1/chat/completions", json=CHAT)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert (
            await client.post(
                f"{url}/v1/chat/completions", json=CHAT, headers={"x-api-key": "sk-wrong-0123456789"}
            )
        ).status_code == 401
        assert (await client.post(f"{url}/v1/chat/completions", json=CHAT, headers=api)).status_code == 200
        assert (
            await client.get(f"{url}/v1/models", headers=admin)
        ).status_code == 200  # admin keys work here too
        assert (await client.get(f"{url}/v1/models")).status_code == 401

        admin_routes = [
            ("GET", "/api/sidecars"), ("GET", "/api/stats"), ("GET", "/api/config"),
            ("DELETE", "/api/sidecars/none"), ("POST", "/api/sidecars/none/restart"),
            ("POST", "/api/models/nope/load"),
        ]  # fmt: skip
        for method, path in admin_routes:
            assert (await client.request(method, f"{url}{path}")).status_code == 401, path
            assert (await client.request(method, f"{url}{path}", headers=api)).status_code == 401, path
            assert (await client.request(method, f"{url}{path}", headers=admin)).status_code != 401, path
        for path in ("/health", "/", "/web/app.js"):
            assert (await client.get(f"{url}{path}")).status_code == 200, path

        everything = (await client.get(f"{url}/api/sidecars", headers=admin)).text
        everything += (await client.get(f"{url}/api/config", headers=admin)).text
        assert API_KEY not in everything and ADMIN_KEY not in everything

        ws = url.replace("http://", "ws://")
        for path in ("/ws/events", "/ws/logs/m"):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(ws + path):
                    pass
            assert rejected.value.status_code == 401
        async with open_websocket_url(f"{ws}/ws/events?key={ADMIN_KEY}") as feed:
            assert '"snapshot"' in await feed.get_message()
        bearer = [(b"authorization", f"Bearer {ADMIN_KEY}".encode())]
        async with open_websocket_url(f"{ws}/ws/events", extra_headers=bearer) as feed:
            assert '"snapshot"' in await feed.get_message()
