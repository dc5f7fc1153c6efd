"""The admin API and the websocket feeds, with a real trio-websocket client against the real server."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    connect_websocket,
    open_websocket_url,
    wrap_client_stream,
)

from orchestrator.config import load_config
from orchestrator.errors import AmbiguousSidecarError, SidecarNotFoundError
from orchestrator.http.admin import PoolView
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.runtime import Daemon
from orchestrator.supervisor.history import History
from orchestrator.supervisor.stats import StatsSampler
from tests.conftest import make_config, pid_alive, poll_until, routes_for, running_daemon, wait_until
from tests.fakes.sidecar_double import DoubleFactory, double_routes, pool_of_doubles

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def ws_url(url: str, path: str) -> str:
    return url.replace("http://", "ws://") + path


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(15):
        return dict(json.loads(await ws.get_message()))


async def receive_until(
    ws: WebSocketConnection, predicate: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Messages up to and including the first that satisfies ``predicate``."""
    messages = [await receive(ws)]
    while not predicate(messages[-1]):
        messages.append(await receive(ws))
    return messages


@pytest.fixture
def config(tmp_path: Path, fake_model: Callable[..., str]) -> Any:
    return make_config(
        tmp_path,
        {"m": {"path": fake_model("m")}, "other": {"path": fake_model("other")}},
        agents={"coder": {"model": "m", "flags": ["-c", "512"]}},
    )


async def start_child(client: httpx.AsyncClient, url: str, model: str = "m") -> dict[str, Any]:
    response = await client.post(f"{url}/api/models/{model}/load")
    assert response.status_code == 200, response.text
    return dict(response.json()["sidecar"])


async def test_log_feed_sends_history_then_live_lines_then_the_exit(
    config: Any, fake_binary: LlamaServerBinary
) -> None:
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        child = await start_child(client, url)
        async with open_websocket_url(ws_url(url, f"/ws/logs/{child['key']}")) as ws:
            history = await receive_until(ws, lambda m: "listening on" in m.get("text", ""))
            assert all(m["type"] == "line" and m["key"] == child["key"] for m in history)
            assert any("model loaded" in m["text"] for m in history)
            assert [m["ts"] for m in history] == sorted(m["ts"] for m in history)
            assert (
                await client.post(f"{url}/v1/chat/completions", json={"model": "m", **CHAT})
            ).status_code == 200
            live = await receive_until(ws, lambda m: "POST /v1/chat/completions" in m.get("text", ""))
            assert live[-1]["type"] == "line"
            assert (
                await client.delete(f"{url}/api/sidecars/{child['key'][:6]}")
            ).status_code == 200  # a key prefix
            rest = await receive_until(ws, lambda m: m["type"] == "exit")
            assert rest[-1]["code"] == 0 and rest[-1]["uptime_s"] > 0
            with pytest.raises(ConnectionClosed), trio.fail_after(5):
                await ws.get_message()  # closed cleanly after the exit message


async def test_history_can_be_skipped_and_unknown_sidecars_are_refused(
    config: Any, fake_binary: LlamaServerBinary
) -> None:
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        await start_child(client, url)
        async with open_websocket_url(ws_url(url, "/ws/logs/m?history=0")) as ws:  # a model name works too
            assert (
                await client.post(f"{url}/v1/chat/completions", json={"model": "m", **CHAT})
            ).status_code == 200
            first = await receive(ws)
            assert "POST /v1/chat/completions" in first["text"]  # no history came first
        async with open_websocket_url(ws_url(url, "/ws/logs/nope")) as ws:
            refused = await receive(ws)
            assert refused["type"] == "error" and refused["code"] == "sidecar_not_found"
            assert "no live sidecar matches 'nope'" in refused["message"]
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                await ws.get_message()
            assert closed.value.reason is not None and closed.value.reason.code == 4404


async def test_a_slow_subscriber_is_told_what_it_lost_while_a_fast_one_gets_every_line(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    # The flood comes in steps of fewer lines than a subscriber's queue holds, each once the fast
    # reader has had the last: it can never fall behind, however slow this machine is. The slow
    # one reads nothing, and its small receive buffer fills at once.
    steps, step = 24, 500
    lines = steps * step  # of 1 KB: far more than the slow one's queue and socket buffers hold
    # No health checks during the flood: only the child's own lines reach the feed.
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, llama_server={"health_interval_s": 600})
    async with (
        running_daemon(config, fake_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=30) as client,
        trio.open_nursery() as nursery,
    ):
        child = await start_child(client, url)
        port, resource = int(url.rsplit(":", 1)[1]), f"/ws/logs/{child['key']}?history=0"
        fast = await connect_websocket(nursery, "127.0.0.1", port, resource, use_ssl=False)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        await sock.connect(("127.0.0.1", port))
        slow = await wrap_client_stream(nursery, trio.SocketStream(sock), "127.0.0.1", resource)
        fast_messages: list[dict[str, Any]] = []
        for first in range(0, lines, step):
            control = {"flood": step, "first": first, "batch": 100, "pause_s": 0}
            assert (
                await client.post(f"http://127.0.0.1:{child['port']}/fake/control", json=control)
            ).status_code == 200
            last = f"flood {first + step - 1} "
            fast_messages += await receive_until(fast, lambda m, end=last: m.get("text", "").startswith(end))
        flood = [int(m["text"].split()[1]) for m in fast_messages if m.get("text", "").startswith("flood ")]
        assert all(m["type"] == "line" for m in fast_messages)
        assert flood == list(range(lines))  # every line, in order

        accounted = 0  # lines received plus lines reported dropped

        def covers_the_flood(message: dict[str, Any]) -> bool:
            nonlocal accounted
            accounted += int(message.get("count", 1))
            return accounted >= len(fast_messages)

        slow_messages = await receive_until(slow, covers_the_flood)
        dropped = sum(m["count"] for m in slow_messages if m["type"] == "dropped")
        received = [m for m in slow_messages if m["type"] == "line"]
        assert dropped > 0
        assert len(received) + dropped == len(fast_messages)  # nothing missing that was not counted
        indices = [int(m["text"].split()[1]) for m in received if m["text"].startswith("flood ")]
        assert indices == sorted(indices)
        assert pid_alive(child["pid"])  # the child was never slowed into trouble
        await fast.aclose()
        await slow.aclose()


async def test_disconnecting_subscribers_leak_nothing(config: Any, fake_binary: LlamaServerBinary) -> None:
    async with running_daemon(config, fake_binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        child = await start_child(client, url)
        assert daemon.pool is not None
        sidecar = daemon.pool.get(child["key"])
        assert sidecar is not None
        before = (len(sidecar.stderr.live), len(daemon.pool.events))
        for _ in range(5):
            async with (
                open_websocket_url(ws_url(url, f"/ws/logs/{child['key']}")) as logs,
                open_websocket_url(ws_url(url, "/ws/events")) as events,
            ):
                await receive(logs)
                await receive(events)
                assert len(sidecar.stderr.live) == before[0] + 1
        await wait_until(lambda: (len(sidecar.stderr.live), len(daemon.pool.events)) == before)  # type: ignore[union-attr]


async def test_events_feed_tells_the_life_of_a_sidecar(config: Any, fake_binary: LlamaServerBinary) -> None:
    async with (
        running_daemon(config, fake_binary) as (url, _daemon),
        httpx.AsyncClient(timeout=30) as client,
        open_websocket_url(ws_url(url, "/ws/events")) as ws,
    ):
        snapshot = await receive(ws)
        assert snapshot["type"] == "snapshot" and snapshot["sidecars"] == []
        assert {r["name"] for r in snapshot["routes"]} == {"m", "other", "coder"}
        assert (
            await client.post(f"{url}/v1/chat/completions", json={"model": "coder", **CHAT})
        ).status_code == 200
        events = [
            e for e in await receive_until(ws, lambda e: e.get("phase") == "finished") if e["type"] != "stats"
        ]
        assert [e["type"] for e in events] == ["spawn", "starting", "ready", "request", "request"]
        assert events[2]["load_s"] > 0 and events[2]["sidecar"]["state"] == "ready"
        assert [e["in_flight"] for e in events[3:]] == [1, 0]
        key = events[0]["key"]
        memory = events[2]["sidecar"]["memory"]
        assert memory["counted_mib"]["Host"] >= memory["need_mib"]["Host"] > 0  # per device, against budgets
        [stats] = [e for e in await receive_until(ws, lambda e: e["type"] == "stats") if e["type"] == "stats"]
        assert stats["sidecars"][key]["counted_mib"]["Host"] >= memory["need_mib"]["Host"]  # re-measured
        assert (await client.delete(f"{url}/api/sidecars/{key}")).status_code == 200
        ending = [e for e in await receive_until(ws, lambda e: e["type"] == "exited") if e["type"] != "stats"]
        assert [(e["type"], e.get("reason")) for e in ending] == [("evicted", "manual"), ("exited", "manual")]
        assert ending[-1]["code"] == 0 and ending[-1]["outcome"] == "stopped"


async def test_restart_load_and_stats(config: Any, fake_binary: LlamaServerBinary) -> None:
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        child = await start_child(client, url, "coder")
        assert child["agents"] == ["coder"] and child["state"] == "ready"
        restarted = await client.post(f"{url}/api/sidecars/{child['key']}/restart")
        assert restarted.status_code == 200
        fresh = restarted.json()["sidecar"]
        assert fresh["key"] == child["key"] and fresh["pid"] != child["pid"] and fresh["restarts"] == 1
        assert not pid_alive(child["pid"])
        assert (await client.post(f"{url}/api/sidecars/0000/restart")).status_code == 404
        unknown = await client.post(f"{url}/api/models/nope/load")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

        async def sampled() -> bool:
            stats = (await client.get(f"{url}/api/stats")).json()
            usage = stats["sidecars"].get(fresh["key"])
            return bool(
                usage
                and usage["rss_bytes"] > 1_000_000
                and stats["pool"]["total_rss_bytes"] > usage["rss_bytes"]
            )

        await poll_until(sampled, timeout_s=10)
        listed = (await client.get(f"{url}/api/sidecars")).json()
        assert listed["pool"]["live"] == 1 and listed["sidecars"][0]["usage"]["processes"] >= 1
        config_routes = (await client.get(f"{url}/api/config")).json()["routes"]
        assert {"name": "coder", "kind": "agent", "model": "m"}.items() <= next(
            r for r in config_routes if r["name"] == "coder"
        ).items()


async def test_dashboard_files_are_served(config: Any, fake_binary: LlamaServerBinary) -> None:
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        page = await client.get(f"{url}/")
        assert page.status_code == 200 and "<title>llama-sidecar</title>" in page.text
        script = await client.get(f"{url}/web/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "http://" not in script.text and "https://" not in script.text  # works offline: no CDN
        assert (await client.get(f"{url}/web/../pyproject.toml")).status_code == 404


async def test_sidecar_names_resolve_by_key_then_route_then_unique_prefix(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    routes = double_routes(
        tmp_path, {"m": {"aliases": ["mm"]}}, agents={"coder": {"model": "m"}}, pool={"max_sidecars": 3}
    )
    async with pool_of_doubles(routes, DoubleFactory()) as pool:
        view = PoolView(pool, StatsSampler(pool), History(pool))
        base = routes.resolve("m")
        configured = await pool.preload(base)
        # Keys with letters no real (hex) key has, so that only these two share a prefix.
        twins = [await pool.preload(dataclasses.replace(base, key=key)) for key in ("xyz123", "xyz456")]
        assert all(view.find(name) is configured for name in (base.key, "m", "mm", "coder", base.key[:10]))
        assert view.find("xyz1") is twins[0] and view.find("xyz456") is twins[1]
        with pytest.raises(AmbiguousSidecarError, match=r"'xyz' is the start of 2 sidecar keys"):
            view.find("xyz")
        with pytest.raises(SidecarNotFoundError, match=r"matches 'nope' .*running: .*xyz123 \(m\), xyz456"):
            view.find("nope")
        await pool.evict(base.key)
        with pytest.raises(SidecarNotFoundError):
            view.find("coder")  # a route name whose child is not running


async def test_a_reload_sends_every_feed_a_fresh_snapshot_and_is_counted(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    path = tmp_path / "c.toml"
    model = fake_model()

    def write(names: str) -> None:
        path.write_text("[server]\nport = 0\n" + "".join(f'[models.{n}]\npath = "{model}"\n' for n in names))

    def load() -> RouteTable:
        return routes_for(load_config(path), fake_binary)

    write("a")
    daemon = Daemon(load(), load)
    # What is seen is checked once the daemon has shut down: a failing check inside would
    # cancel the daemon with a feed open, whose end is not this test's subject.
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        url = await nursery.start(daemon.run)
        async with open_websocket_url(ws_url(url, "/ws/events")) as ws:
            first = await receive(ws)
            write("ab")
            reloaded = await client.post(f"{url}/api/reload")
            messages = await receive_until(ws, lambda m: m["type"] == "snapshot")
        metrics = (await client.get(f"{url}/metrics")).text
        daemon.request_shutdown()
    assert [r["name"] for r in first["routes"]] == ["a"] and reloaded.status_code == 200
    assert [m["type"] for m in messages if m["type"] != "stats"] == ["reloaded", "snapshot"]
    assert [r["name"] for r in messages[-1]["routes"]] == ["a", "b"]  # the dashboard redraws from it
    assert "llama_sidecar_reloads_total 1.0" in metrics
