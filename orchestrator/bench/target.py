"""The daemon a benchmark talks to: one it starts as a separate process, or one already running."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from orchestrator import flags as flagmod
from orchestrator.config import Config
from orchestrator.errors import BenchError

START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0


@dataclass(frozen=True)
class Target:
    """A daemon's base URL, the headers it wants, and its pid when it runs on this machine."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    pid: int | None = None

    async def sidecars(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        response = await client.get(f"{self.url}/api/sidecars", headers=dict(self.headers))
        response.raise_for_status()
        sidecars: list[dict[str, Any]] = response.json()["sidecars"]
        return sidecars

    async def evict_all(self, client: httpx.AsyncClient) -> None:
        """Stop every child, so the next request for a model is a cold start."""
        for sidecar in await self.sidecars(client):
            response = await client.delete(
                f"{self.url}/api/sidecars/{sidecar['key']}", headers=dict(self.headers)
            )
            if response.status_code not in (200, 404):  # 404: it exited meanwhile
                raise BenchError(
                    f"cannot stop {sidecar['model']}: HTTP {response.status_code} {response.text}"
                )


def daemon_document(
    config: Config,
    models: Mapping[str, Sequence[str]] | None = None,
    pool: Mapping[str, Any] | None = None,
    kv_cache: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A daemon configuration for a benchmark, from ``config``'s models.

    ``models`` maps each name to serve to the configured model it runs and
    extra flags (default: every configured model as it is). Request flags are
    allowed, so a sweep can try flag variants on any model. The KV cache across
    swaps is off unless ``kv_cache`` says otherwise: a benchmark's children
    neither spend time saving nor touch the user's own store.
    """
    chosen = models or {name: [] for name in config.models}
    entries = {}
    for name, extra in chosen.items():
        source = config.models[name.split("@")[0]]
        entry: dict[str, Any] = {
            "path": source.path,
            "flags": flagmod.render(source.flags) + list(extra),
            "allow_request_flags": True,
        }
        if config.bin_for(source):
            entry["bin"] = config.bin_for(source)
        entries[name] = entry
    return {
        "server": {"host": "127.0.0.1"},
        "llama_server": {"base_args": flagmod.render(config.llama_server.base_args)},
        "pool": dict(pool or {}),
        "kv_cache": dict(kv_cache or {"enabled": False}),
        "models": entries,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def spawned_daemon(
    document: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[Target]:
    """Run ``orchestrator serve`` for the duration of the block, on a free loopback port.

    Its config: ``document``, else the file ``config_path``, else the demo.
    """
    with tempfile.TemporaryDirectory(prefix="llama-sidecar-") as scratch:
        if document is not None:
            config_path = str(Path(scratch) / "config.json")
            await trio.Path(config_path).write_text(json.dumps(document), "utf-8")
        log_path = Path(scratch) / "daemon.log"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        # The daemon holds our end of its stdin: if this process dies, even by SIGKILL, it stops too.
        command = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port), "--until-stdin-closes"]
        command += ["--config", config_path] if config_path else []
        with log_path.open("wb") as log:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            await _wait_listening(url, process, log_path)
            yield Target(url, dict(headers or {}), process.pid)
        finally:
            process.terminate()
            with trio.move_on_after(STOP_DEADLINE_S):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _wait_listening(url: str, process: trio.Process, log_path: Path) -> None:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        with trio.move_on_after(START_DEADLINE_S):
            while process.poll() is None:
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                await trio.sleep(0.05)
    text = await trio.Path(log_path).read_text("utf-8", "replace")
    tail = text.strip().splitlines()[-10:]
    raise BenchError(f"the benchmark's daemon did not start on {url}:\n" + "\n".join(tail))


async def attached_daemon(url: str, key: str | None) -> Target:
    """A running daemon; its pid is known when it runs on this machine (for CPU and memory)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        try:
            response = await client.get(f"{url}/api/stats", headers=headers)
        except httpx.TransportError as error:
            raise BenchError(f"no daemon answers at {url}: {error}") from error
    if response.status_code != 200:
        raise BenchError(f"{url}/api/stats answered HTTP {response.status_code}: {response.text[:200]}")
    local = urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
    daemon = response.json()["pool"].get("daemon") or {}
    return Target(url.rstrip("/"), headers, daemon.get("pid") if local else None)
