"""The access gate over real HTTP: DNS rebinding, cross-site requests and websockets are refused.

Each attack is sent as a browser would send it, to a real daemon (hypercorn on a
loopback port, the fake llama-server behind it), and the same requests from our
own origin, from clients without an Origin (curl, the openai client, our CLI)
and from configured names and origins are shown to pass.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from orchestrator.config import load_config
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.runtime import Daemon
from tests.conftest import browser_page, make_config, routes_for, running_daemon

CHAT = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
EVIL = "http://evil.example"


def config(tmp_path: Path, fake_model: Callable[..., str], **server: Any) -> Any:
    return make_config(tmp_path, {"m": {"path": fake_model()}}, server=server)


async def live_children(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    return list((await client.get(f"{url}/api/sidecars")).json()["sidecars"])


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "permission_error"


async def test_the_three_attacks_are_refused_and_nothing_is_loaded(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    async with (
        running_daemon(config(tmp_path, fake_model), fake_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        port = url.rsplit(":", 1)[1]
        # 1. DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 reads our responses.
        rebound = await client.get(f"{url}/api/config", headers={"host": f"evil.example:{port}"})
        assert_refused(rebound, "host_not_allowed")
        assert "server.allowed_hosts" in rebound.json()["error"]["message"]
        assert "routes" not in rebound.text
        for path in ("/", "/web/app.js", "/health", "/v1/models"):  # every path, the open ones too
            refused = await client.get(f"{url}{path}", headers={"host": "evil.example"})
            assert_refused(refused, "host_not_allowed")

        # 2. A cross-site "simple" POST (a form, or fetch with mode no-cors): no preflight.
        simple = {"origin": EVIL, "content-type": "text/plain"}
        load = await client.post(f"{url}/api/models/m/load", headers=simple)
        assert_refused(load, "origin_not_allowed")
        assert "server.allowed_origins" in load.json()["error"]["message"]
        chat = await client.post(f"{url}/v1/chat/completions", content=CHAT, headers=simple)
        assert_refused(chat, "origin_not_allowed")
        form = {"origin": EVIL, "content-type": "application/x-www-form-urlencoded"}
        assert_refused(await client.delete(f"{url}/api/sidecars/m", headers=form), "origin_not_allowed")
        # A page on another port of this machine is another site too.
        other_port = {"origin": "http://127.0.0.1:1", "content-type": "text/plain"}
        assert_refused(
            await client.post(f"{url}/api/models/m/load", headers=other_port), "origin_not_allowed"
        )
        assert await live_children(client, url) == []  # nothing was loaded or generated

        # 3. Cross-site websockets: browsers apply no CORS to them.
        ws = url.replace("http://", "ws://")
        for path in ("/ws/events", "/ws/logs/m"):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(ws + path, extra_headers=[(b"origin", EVIL.encode())]):
                    pass
            assert rejected.value.status_code == 403
            assert rejected.value.body is not None and b"origin_not_allowed" in rejected.value.body


async def test_our_own_origin_and_clients_without_one_pass(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    async with (
        running_daemon(config(tmp_path, fake_model), fake_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        port = url.rsplit(":", 1)[1]
        # curl -d without a content type (as the README shows it): no Origin, form content type.
        curl = {"content-type": "application/x-www-form-urlencoded"}
        answer = await client.post(f"{url}/v1/chat/completions", content=CHAT, headers=curl)
        assert answer.status_code == 200, answer.text
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert (await client.get(f"{url}/api/config", headers={"host": host})).status_code == 200
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):  # the dashboard's own
            own = await client.post(f"{url}/api/models/m/load", headers={"origin": origin})
            assert own.status_code == 200, own.text
            ws = url.replace("http://", "ws://")
            async with open_websocket_url(
                f"{ws}/ws/events", extra_headers=[(b"origin", origin.encode())]
            ) as feed:
                assert '"snapshot"' in await feed.get_message()
        assert len(await live_children(client, url)) == 1


async def test_configured_hosts_and_origins_pass(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    settings = {"allowed_hosts": ["box.lan"], "allowed_origins": ["https://chat.example.com"]}
    async with (
        running_daemon(config(tmp_path, fake_model, **settings), fake_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=30) as client,
    ):
        port = url.rsplit(":", 1)[1]
        assert (await client.get(f"{url}/api/config", headers={"host": "box.lan"})).status_code == 200
        assert (
            await client.get(
                f"{url}/api/config", headers={"host": f"box.lan:{port}", "origin": f"http://box.lan:{port}"}
            )
        ).status_code == 200  # the dashboard opened under its LAN name
        assert_refused(
            await client.get(f"{url}/api/config", headers={"host": "evil.example"}), "host_not_allowed"
        )
        allowed = {"origin": "https://chat.example.com", "content-type": "text/plain"}
        answer = await client.post(f"{url}/v1/chat/completions", content=CHAT, headers=allowed)
        assert answer.status_code == 200, answer.text
        assert_refused(
            await client.post(
                f"{url}/v1/chat/completions", content=CHAT, headers={"origin": "https://chat.example.org"}
            ),
            "origin_not_allowed",
        )
        ws = url.replace("http://", "ws://")
        async with open_websocket_url(
            f"{ws}/ws/events", extra_headers=[(b"origin", b"https://chat.example.com")]
        ) as feed:
            assert '"snapshot"' in await feed.get_message()


async def test_a_changed_allow_list_applies_on_reload_without_a_restart(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    path = tmp_path / "c.toml"
    model = fake_model()

    def write(hosts: list[str]) -> None:
        path.write_text(
            f'[server]\nport = 0\nallowed_hosts = {json.dumps(hosts)}\n[models.m]\npath = "{model}"\n'
        )

    def load() -> RouteTable:
        return routes_for(load_config(path), fake_binary)

    write([])
    daemon = Daemon(load(), load)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        url = await nursery.start(daemon.run)
        assert_refused(await client.get(f"{url}/api/config", headers={"host": "box.lan"}), "host_not_allowed")
        write(["box.lan"])
        assert (await client.post(f"{url}/api/reload")).status_code == 200
        assert (await client.get(f"{url}/api/config", headers={"host": "box.lan"})).status_code == 200
        daemon.request_shutdown()


ATTACK_PAGE = """<!doctype html><title>not your dashboard</title><script>
window.results = (async () => {
  const target = "http://127.0.0.1:PORT", out = {};
  const simple = (path, body) => fetch(target + path, {method: "POST", mode: "no-cors",
    headers: {"content-type": "text/plain"}, body});
  try { await simple("/api/models/smollm2/load", "{}"); out.load = "sent"; }
  catch (e) { out.load = "failed"; }
  const chat = JSON.stringify({model: "smollm2", max_tokens: 4, messages: [{role: "user", content: "hi"}]});
  try { await simple("/v1/chat/completions", chat); out.chat = "sent"; }
  catch (e) { out.chat = "failed"; }
  try { out.models = "read: " + await (await fetch(target + "/v1/models")).text(); }
  catch (e) { out.models = "failed"; }
  out.ws = await new Promise((resolve) => {
    const ws = new WebSocket("ws://127.0.0.1:PORT/ws/events");
    ws.onopen = () => resolve("open");
    ws.onerror = () => resolve("error");
  });
  return out;
})();
</script>"""


def attack_from_another_origin(url: str, chromium: str) -> dict[str, Any]:
    """A page on a second loopback origin tries to drive the daemon; what the page saw (in a thread)."""
    page_html = ATTACK_PAGE.replace("PORT", url.rsplit(":", 1)[1]).encode()

    class AttackPage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page_html)))
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

    attacker = ThreadingHTTPServer(("127.0.0.1", 0), AttackPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    # DNS rebinding for real: the browser resolves evil.example to our loopback address.
    try:
        with browser_page(chromium, "--host-resolver-rules=MAP evil.example 127.0.0.1") as page:
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
            results = dict(page.evaluate("window.results"))
            rebound = page.goto(url.replace("127.0.0.1", "evil.example") + "/api/config")
            assert rebound is not None
            results["rebound_status"] = rebound.status
            results["rebound_body"] = page.content()
    finally:
        attacker.shutdown()
        attacker.server_close()
    return results


@pytest.mark.real
async def test_a_web_page_in_a_real_browser_cannot_drive_the_daemon(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, chromium: str
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "512"]}})
    async with running_daemon(config, real_binary) as (url, daemon):
        seen = await trio.to_thread.run_sync(partial(attack_from_another_origin, url, chromium))
        assert daemon.pool is not None and daemon.pool.sidecars() == []  # nothing loaded, nothing generated
        assert seen["models"] == "failed"  # the daemon's answer was not readable by the page
        assert seen["ws"] == "error"  # the handshake was refused: the feed never opened
        assert seen["rebound_status"] == 403 and "host_not_allowed" in seen["rebound_body"]
        assert "routes" not in seen["rebound_body"]
        async with httpx.AsyncClient(timeout=30) as client:  # the daemon itself is unharmed
            assert (await client.get(f"{url}/api/sidecars")).json()["sidecars"] == []
