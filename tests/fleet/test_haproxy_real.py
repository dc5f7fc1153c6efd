"""Three daemons behind a real HAProxy (Debian's), configured by `orchestrator fleet haproxy`.

Each daemon is its own `orchestrator serve` process on its own loopback address
(127.0.0.2, .3, .4), room for two children, the fake llama-server behind it;
the official openai client talks to HAProxy. HAProxy's runtime API (``show
stat``) says when it has taken in what the daemons' agent checks report, so
nothing waits on a clock.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, redirect_stdout
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from orchestrator.cli import main
from orchestrator.routing import LlamaServerBinary
from tests.conftest import free_port, poll_until, wait_until

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SHARED_TOKENS = 12  # the fake streams this many tokens for "shared", a little apart


@dataclass
class Node:
    url: str
    process: trio.Process

    async def children(self, client: httpx.AsyncClient) -> list[str]:
        return [s["model"] for s in (await client.get(f"{self.url}/api/sidecars")).json()["sidecars"]]


@asynccontextmanager
async def fleet(
    tmp_path: Path, binary: LlamaServerBinary, models: dict[str, Any]
) -> AsyncIterator[list[Node]]:
    async with trio.open_nursery() as nursery:
        nodes = []
        for index, host in enumerate(HOSTS):
            port = free_port(host)
            document = {
                "server": {"host": host, "port": port, "agent_port": free_port(host), "drain_notice_s": 2},
                "llama_server": {"bin": binary.path, "health_interval_s": 0.2, "stop_grace_s": 2},
                "pool": {"max_sidecars": 2},
                "kv_cache": {"dir": str(tmp_path / f"kv{index}")},
                "models": models,
            }
            config = tmp_path / f"daemon{index}.json"
            config.write_text(json.dumps(document))
            log = (tmp_path / f"daemon{index}.log").open("wb")
            command = [
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--config",
                str(config),
                "--until-stdin-closes",
            ]
            process = await nursery.start(
                partial(trio.run_process, command, stdin=subprocess.PIPE, stdout=log, stderr=log, check=False)
            )
            nodes.append(Node(f"http://{host}:{port}", process))
        async with httpx.AsyncClient(timeout=10) as client:
            for node in nodes:
                await poll_until(partial(_answers, client, node.url), 30)
        try:
            yield nodes
        finally:
            for node in nodes:
                if node.process.returncode is None:
                    node.process.terminate()
            for node in nodes:
                with trio.fail_after(30):
                    await node.process.wait()


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/health")).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def haproxy(
    tmp_path: Path, nodes: list[Node]
) -> AsyncIterator[tuple[str, Callable[[], list[dict[str, str]]]]]:
    executable = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if executable is None:
        pytest.fail("haproxy is needed (Debian package haproxy; ops/install.sh --dev installs it)")
    port, socket_path = free_port(), str(tmp_path / "haproxy.sock")
    argv = ["fleet", "haproxy", "--bind", f"127.0.0.1:{port}", "--stats-socket", socket_path]
    for node in nodes:
        argv += ["--node", node.url]
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert await trio.to_thread.run_sync(main, argv) == 0
    config = tmp_path / "haproxy.cfg"
    config.write_text(printed.getvalue())
    checked = await trio.run_process([executable, "-c", "-f", str(config)], capture_stdout=True,
                                     capture_stderr=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def stats() -> list[dict[str, str]]:
        """HAProxy's `show stat`: one row per frontend, backend and server."""
        with socket.socket(socket.AF_UNIX) as runtime:
            runtime.connect(socket_path)
            runtime.sendall(b"show stat\n")
            data = b""
            while chunk := runtime.recv(65536):
                data += chunk
        return list(csv.DictReader(io.StringIO(data.decode().lstrip("# "))))

    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(trio.run_process, [executable, "-db", "-f", str(config)], check=False)
        )
        await poll_until(lambda: trio.to_thread.run_sync(Path(socket_path).exists), 10)
        try:
            yield f"http://127.0.0.1:{port}", stats
        finally:
            process.terminate()


def serving(stats: list[dict[str, str]], backend: str) -> set[str]:
    """The servers of ``backend`` that take new requests (up, and not drained to weight 0)."""
    return {
        row["svname"] for row in stats
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        and row["status"].startswith("UP") and int(row["weight"] or 0) > 0
    }  # fmt: skip


def backend_of(config_text: str, model: str, tier: str) -> str:
    for line in config_text.splitlines():
        if line.startswith("backend ") and line.endswith(f"# {model}: {tier}"):
            return line.split()[1]
    raise AssertionError(f"no {tier} backend for {model}")




def chat(base_url: str, model: str, timeout_s: float = 20) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", timeout=timeout_s, max_retries=0)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def stream(base_url: str, model: str) -> tuple[float, float, int]:
    """(time to first chunk, total, content chunks) of one streamed chat."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", timeout=30, max_retries=0)
    started = time.perf_counter()
    first, chunks = 0.0, 0
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, chunks


@dataclass
class Scene:
    """Three daemons behind HAProxy: its URL and config, its `show stat`, an HTTP client."""

    url: str
    config: str
    stats: Callable[[], list[dict[str, str]]]
    nodes: list[Node]
    client: httpx.AsyncClient

    async def until_serving(self, model: str, tier: str, expected: set[str]) -> None:
        backend = backend_of(self.config, model, tier)

        async def check() -> bool:
            return serving(await trio.to_thread.run_sync(self.stats), backend) == expected

        await poll_until(check, 15)


@pytest.mark.real
async def test_a_fleet_behind_haproxy_routes_by_model_spreads_drains_and_fails_over(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    models = {
        "shared": {"path": fake_model("shared", tokens=SHARED_TOKENS, token_delay_s=0.03)},
        "fresh": {"path": fake_model("fresh")},
        "p1": {"path": fake_model("p1")},
        "p2": {"path": fake_model("p2")},
    }
    async with fleet(tmp_path, fake_binary, models) as nodes, httpx.AsyncClient(timeout=30) as client:
        for node, names in zip(nodes, (("p1", "p2"), ("shared",), ("p1", "p2")), strict=True):
            for name in names:
                assert (await client.post(f"{node.url}/api/models/{name}/load")).status_code == 200
        async with haproxy(tmp_path, nodes) as (url, stats):
            scene = Scene(url, (tmp_path / "haproxy.cfg").read_text(), stats, nodes, client)
            await affinity_and_streaming(scene)
            await spread(scene)
            holder = await drain(scene)
            await failover(scene, holder)


async def affinity_and_streaming(scene: Scene) -> None:
    """"shared" is loaded on the second daemon only: every request goes there, streams unbuffered."""
    first, second, third = scene.nodes
    await scene.until_serving("shared", "loaded", {"d2"})
    for _ in range(6):
        assert await trio.to_thread.run_sync(chat, scene.url, "shared")
    assert await first.children(scene.client) == await third.children(scene.client) == ["p1", "p2"]
    direct = await trio.to_thread.run_sync(stream, second.url, "shared")
    through = await trio.to_thread.run_sync(stream, scene.url, "shared")
    print(f"stream direct: ttft {direct[0] * 1000:.1f} ms; through HAProxy: {through[0] * 1000:.1f} ms")
    assert through[2] == direct[2] == SHARED_TOKENS
    assert through[0] < through[1] / 2  # the first chunk long before the last: nothing held back


async def spread(scene: Scene) -> None:
    """"fresh" is loaded nowhere and fits beside what runs only on the second daemon: it starts there."""
    await scene.until_serving("fresh", "fits", {"d2"})
    assert await trio.to_thread.run_sync(chat, scene.url, "fresh")
    assert sorted(await scene.nodes[1].children(scene.client)) == ["fresh", "shared"]


async def drain(scene: Scene) -> Node:
    """SIGTERM the second daemon while it streams: the stream finishes whole, and once HAProxy has
    seen it drain, "shared" starts and is served elsewhere. Returns the daemon that serves it now."""
    first, second, third = scene.nodes
    streamed: list[tuple[float, float, int]] = []

    async def long_stream() -> None:
        streamed.append(await trio.to_thread.run_sync(stream, scene.url, "shared"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_stream)
            await poll_until(partial(_busy, scene.client, second.url), 10)
            second.process.send_signal(signal.SIGTERM)
        assert streamed[0][2] == SHARED_TOKENS
        await scene.until_serving("shared", "any", {"d1", "d3"})
        assert await trio.to_thread.run_sync(chat, scene.url, "shared")
        await second.process.wait()
    [holder] = [node for node in (first, third) if "shared" in await node.children(scene.client)]
    return holder


async def failover(scene: Scene, holder: Node) -> None:
    """SIGKILL the daemon serving "shared" while requests keep coming: each one ends (an answer or
    an error, none hangs) and the other daemon serves within seconds."""
    other = next(node for node in (scene.nodes[0], scene.nodes[2]) if node is not holder)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                chat(scene.url, "shared", timeout_s=15)
                outcomes.append((time.monotonic(), "ok"))
            except openai.APIError as error:
                outcomes.append((time.monotonic(), type(error).__name__))

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, keep_asking))
            await wait_until(lambda: len(outcomes) >= 2, 20)
            holder.process.kill()
            killed_at = time.monotonic()
            await poll_until(partial(_serves, scene.client, other, "shared"), 30)
            await wait_until(lambda: sum(at > killed_at and what == "ok" for at, what in outcomes) >= 3, 30)
            stop.set()
    after = [(at, what) for at, what in outcomes if at > killed_at]
    recovered = min(at for at, what in after if what == "ok") - killed_at
    print(f"failover: answered {recovered:.2f} s after SIGKILL; then: {[what for _, what in after]}")
    assert recovered < 10


async def _busy(client: httpx.AsyncClient, url: str) -> bool:
    return any(s["in_flight"] > 0 for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"])


async def _serves(client: httpx.AsyncClient, node: Node, model: str) -> bool:
    return model in await node.children(client)
