"""API and admin keys: every protected route and feed refuses without a key and opens with one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from orchestrator.auth import (
    AccessRules,
    Exchange,
    Origin,
    exposure_problem,
    parse_origin,
    presented_key,
    split_host_header,
)
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, running_daemon

API_KEY = "sk-api-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_policy() -> None:
    both = AccessRules((API_KEY,), (ADMIN_KEY,))
    assert both.allows("/v1/chat/completions", API_KEY) and both.allows("/v1/models", ADMIN_KEY)
    assert not both.allows("/v1/models", None) and not both.allows("/v1/models", "sk-wrong-0123456789")
    assert both.allows("/api/sidecars", ADMIN_KEY) and not both.allows("/api/sidecars", API_KEY)
    assert both.allows("/health", None) and both.allows("/", None) and both.allows("/web/app.js", None)
    api_only = AccessRules((API_KEY,), ())
    assert not api_only.allows("/api/sidecars", None) and api_only.allows(
        "/ws/events", API_KEY
    )  # never more open
    assert AccessRules().allows("/api/sidecars", None)  # no keys configured: loopback default, open
    assert not both.allows("/metrics", None)
    scraped = AccessRules((API_KEY,), (ADMIN_KEY,), open_metrics=True)  # server.metrics_without_key
    assert scraped.allows("/metrics", None) and not scraped.allows("/api/sidecars", None)


def test_presented_key_forms() -> None:
    assert presented_key(f"Bearer {API_KEY}", None, None) == API_KEY
    assert presented_key(f"bearer  {API_KEY} ", None, None) == API_KEY
    assert presented_key(None, API_KEY, None) == API_KEY
    assert presented_key("Basic abc", None, API_KEY) == API_KEY
    assert presented_key(None, None, None) is None


@pytest.mark.parametrize(
    ("host", "policy", "refused"),
    [
        ("127.0.0.1", AccessRules(), False),
        ("::1", AccessRules(), False),
        ("localhost", AccessRules(), False),
        ("0.0.0.0", AccessRules(), True),
        ("0.0.0.0", AccessRules((API_KEY,), ()), True),
        ("192.168.1.5", AccessRules((API_KEY,), (ADMIN_KEY,)), False),
        ("myhost.lan", AccessRules(), True),
    ],
)
def test_exposure(host: str, policy: AccessRules, refused: bool) -> None:
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


def test_parsing_host_headers_and_origins() -> None:
    assert split_host_header("LocalHost:8080") == ("localhost", 8080)
    assert split_host_header("[::1]:80") == ("::1", 80)
    assert split_host_header("127.0.0.1") == ("127.0.0.1", None)
    for bad in ("", "evil.example:http", "[::1", "a b", "host:0", "host:70000", "x/y"):
        assert split_host_header(bad) is None, bad
    assert parse_origin("HTTP://LocalHost:8080") == Origin("http", "localhost", 8080)
    assert parse_origin("https://chat.example.com") == Origin("https", "chat.example.com", 443)
    assert parse_origin("http://[::1]:3000") == Origin("http", "::1", 3000)
    assert str(Origin("http", "::1", 3000)) == "http://[::1]:3000"
    for bad in (
        "null",
        "file://",
        "http://x.example/path",
        "ftp://x.example",
        "http://:80",
        "http://a:99999",
    ):
        assert parse_origin(bad) is None, bad


OURS = ("127.0.0.1", 8080)  # the address a loopback connection arrived on


def exchange(host: str | None = "127.0.0.1:8080", origin: str | None = None, path: str = "/api/config",
             key: str | None = None, local: tuple[str, int] = OURS) -> Exchange:  # fmt: skip
    return Exchange(path, host, origin, key, local)


@pytest.mark.parametrize(
    ("rules", "request_", "code"),
    [
        # The loopback default: our own names pass, any other name is refused (DNS rebinding).
        (AccessRules(), exchange(), None),
        (AccessRules(), exchange("localhost:8080"), None),
        (AccessRules(), exchange("[::1]:8080"), None),
        (AccessRules(), exchange("localhost"), None),  # any port, or none
        (AccessRules(), exchange(None), None),  # HTTP/1.0 without Host: not a browser
        (AccessRules(), exchange("evil.example:8080"), "host_not_allowed"),
        (AccessRules(), exchange("localhost.evil.example"), "host_not_allowed"),
        (AccessRules(), exchange("127.0.0.1:8080@evil"), "host_not_allowed"),
        (AccessRules(allowed_hosts=("box.lan",)), exchange("box.lan:8080"), None),
        (AccessRules(allowed_hosts=("*",)), exchange("anything.example"), None),
        # A network bind requires keys: any Host, unless allowed_hosts narrows it.
        (AccessRules(("k" * 16,), bind_host="0.0.0.0"), exchange("box.lan", key="k" * 16), None),
        (
            AccessRules(bind_host="0.0.0.0", allowed_hosts=("box.lan",)),
            exchange("other.lan"),
            "host_not_allowed",
        ),
        (AccessRules(bind_host="192.168.1.5"), exchange("192.168.1.5:8080"), None),
        # Origin: our dashboard's own (names above, the port the connection arrived on), or configured.
        (AccessRules(), exchange(origin="http://127.0.0.1:8080"), None),
        (AccessRules(), exchange(origin="http://localhost:8080"), None),
        (AccessRules(), exchange(origin="http://evil.example"), "origin_not_allowed"),
        (AccessRules(), exchange(origin="http://127.0.0.1:3000"), "origin_not_allowed"),  # another port
        (AccessRules(), exchange(origin="null"), "origin_not_allowed"),
        # Under DNS rebinding Host and Origin are both the attacker's: allowing any Host is not
        # allowing any Origin.
        (
            AccessRules(allowed_hosts=("*",)),
            exchange("evil.example:8080", "http://evil.example:8080"),
            "origin_not_allowed",
        ),
        (
            AccessRules(bind_host="0.0.0.0"),
            exchange("evil.example:8080", "http://evil.example:8080"),
            "origin_not_allowed",
        ),
        (
            AccessRules(allowed_origins=(Origin("http", "127.0.0.1", 3000),)),
            exchange(origin="http://127.0.0.1:3000"),
            None,
        ),
        (AccessRules(allowed_hosts=("box.lan",)), exchange("box.lan:8080", "http://box.lan:8080"), None),
        # On a wildcard bind the address a LAN client reached is ours: its dashboard works by IP.
        (
            AccessRules(bind_host="0.0.0.0"),
            exchange("192.168.1.5:8080", "http://192.168.1.5:8080", local=("192.168.1.5", 8080)),
            None,
        ),
        (
            AccessRules(bind_host="0.0.0.0"),
            exchange("192.168.1.5:8080", "http://192.168.1.9:8080", local=("192.168.1.5", 8080)),
            "origin_not_allowed",
        ),
        # Keys come last, and only when host and origin pass.
        (AccessRules(("k" * 16,)), exchange(), "invalid_api_key"),
        (AccessRules(("k" * 16,)), exchange("evil.example"), "host_not_allowed"),
    ],
)
def test_host_and_origin_rules(rules: AccessRules, request_: Exchange, code: str | None) -> None:
    refusal = rules.refusal(request_)
    assert (refusal and refusal.code) == code
    if refusal is not None and code != "invalid_api_key":
        assert refusal.status == 403
        assert "server.allowed_hosts" in refusal.message or "server.allowed_origins" in refusal.message


def test_a_refusal_quotes_a_long_header_only_in_part() -> None:
    refusal = AccessRules().refusal(exchange(origin="http://" + "a" * 5000 + ".example"))
    assert refusal is not None and len(refusal.message) < 800
