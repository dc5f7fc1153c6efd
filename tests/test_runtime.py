"""The daemon as a process: `orchestrator serve` starts, serves and stops on a signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.runtime import Daemon, bind_address
from tests.conftest import free_port, make_config, pid_alive, poll_until, port_taken, routes_for, wait_until


def test_bind_address_brackets_ipv6() -> None:
    assert bind_address("127.0.0.1", 80) == "127.0.0.1:80"
    assert bind_address("::1", 80) == "[::1]:80"


def run_serve(config: Path) -> subprocess.CompletedProcess[str]:
    """`orchestrator serve --config` expected to exit on its own (an error before serving)."""
    command = [sys.executable, "-m", "orchestrator", "serve", "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def serve_chat_then_sigterm(arguments: list[str], port: int, model: str) -> tuple[trio.Process, int]:
    """Run `orchestrator serve ARGUMENTS`, chat once, SIGTERM it; the process and the child's pid."""
    url = f"http://127.0.0.1:{port}"
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            trio.run_process, [sys.executable, "-m", "orchestrator", "serve", *arguments]
        )
        async with httpx.AsyncClient(timeout=10) as client:
            with trio.fail_after(20):
                while True:
                    try:
                        if (await client.get(f"{url}/health")).status_code == 200:
                            break
                    except httpx.ConnectError:
                        await trio.sleep(0.05)  # not listening yet
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            answer = await client.post(f"{url}/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            [child] = (await client.get(f"{url}/api/sidecars")).json()["sidecars"]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
    return process, int(child["pid"])


async def test_serve_process_stops_gracefully_on_sigterm(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    port = free_port()
    config = f'[server]\nport = {port}\n[llama_server]\nbin = "{fake_binary.path}"\n'
    (tmp_path / "c.toml").write_text(config + f'[models.m]\npath = "{fake_model()}"\n')
    process, child_pid = await serve_chat_then_sigterm(["--config", str(tmp_path / "c.toml")], port, "m")
    assert process.returncode == 0
    assert not pid_alive(child_pid)


@pytest.mark.real
async def test_real_demo_without_a_config(real_binary: LlamaServerBinary, demo_model: Path) -> None:
    """README command one: `orchestrator serve` with no config serves SmolLM2 as smollm2."""
    port = free_port()
    process, child_pid = await serve_chat_then_sigterm(["--port", str(port)], port, "smollm2")
    assert process.returncode == 0
    assert not pid_alive(child_pid)


def test_serve_with_a_bad_config_exits_1_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[models.m]\npath = "absent.gguf"\n')
    result = run_serve(tmp_path / "c.toml")
    assert result.returncode == 1
    assert "models.m.path: file not found" in result.stderr


def test_serve_on_a_taken_port_is_a_short_error(tmp_path: Path, fake_binary: LlamaServerBinary) -> None:
    (tmp_path / "m.gguf").write_text("{}")
    with port_taken() as port:
        config = f'[server]\nport = {port}\n[llama_server]\nbin = "{fake_binary.path}"\n'
        (tmp_path / "c.toml").write_text(config + '[models.m]\npath = "m.gguf"\n')
        result = run_serve(tmp_path / "c.toml")
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


async def test_shutdown_lets_an_in_flight_stream_finish_then_stops_the_child(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(tokens=10, token_delay_s=0.1)}})
    daemon = Daemon(routes_for(config, fake_binary))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()
                await lines.__anext__()
                assert daemon.pool is not None
                [child] = daemon.pool.sidecars()
                daemon.request_shutdown()  # mid-stream
                rest = [line async for line in lines]
        assert "data: [DONE]" in rest  # the request was not cut
    assert child.pid is not None and not pid_alive(child.pid)


def test_a_daemon_cancelled_without_a_shutdown_returns_and_stops_its_children(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    """As when the task that runs it fails: no shutdown is requested, everything is cancelled.

    In a thread with its own trio loop: a daemon that does not return (it once waited,
    shielded, for a shutdown that never came) fails this test instead of hanging the suite.
    """
    config = make_config(tmp_path, {"m": {"path": fake_model(tokens=100, token_delay_s=0.05)}})
    daemon = Daemon(routes_for(config, fake_binary))
    child_pids: list[int | None] = []

    async def cancel_mid_request() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(daemon.run)
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                    await response.aiter_lines().__anext__()  # a request in flight
                    assert daemon.pool is not None
                    child_pids.extend(child.pid for child in daemon.pool.sidecars())
                    nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(cancel_mid_request,), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the cancelled daemon did not return"
    [pid] = child_pids
    assert pid is not None and not pid_alive(pid)


async def test_reload_keeps_unchanged_children_drains_the_rest_and_refuses_bad_configs(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    path = tmp_path / "c.toml"
    paths = {name: fake_model(name, tokens=10, token_delay_s=0.05) for name in "abc"}

    def write(models: dict[str, list[str]]) -> None:
        entries = "".join(
            f'[models.{name}]\npath = "{paths[name]}"\nflags = {json.dumps(flags)}\n'
            for name, flags in models.items()
        )
        path.write_text("[server]\nport = 0\n[llama_server]\nhealth_interval_s = 0.2\n" + entries)

    def load() -> RouteTable:
        return routes_for(load_config(path), fake_binary)

    write({"a": ["-c", "512"], "b": []})
    daemon = Daemon(load(), load)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(daemon.run)
        async with httpx.AsyncClient(timeout=30) as client:
            a, b = [(await client.post(f"{url}/api/models/{n}/load")).json()["sidecar"] for n in "ab"]
            write({"a": ["--ctx-size=512"], "c": []})  # a: the same flags spelled differently; b: gone
            body = {"model": "b", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as in_flight:
                lines = in_flight.aiter_lines()
                await lines.__anext__()
                reloaded = await client.post(f"{url}/api/reload")
                assert reloaded.status_code == 200
                assert reloaded.json()["kept"] == [a["key"]] and reloaded.json()["stopping"] == [b["key"]]
                rest = [line async for line in lines]
            assert "data: [DONE]" in rest  # b's request finished before b stopped
            await wait_until(lambda: not pid_alive(b["pid"]))
            [still] = [s for s in (await client.get(f"{url}/api/sidecars")).json()["sidecars"]]
            assert still["pid"] == a["pid"]
            names = {m["id"] for m in (await client.get(f"{url}/v1/models")).json()["data"]}
            assert names == {"a", "c"}

            write({"a": ["--port", "1"]})
            refused = await client.post(f"{url}/api/reload")
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_config"
            assert any("--port is set by the supervisor" in p for p in refused.json()["problems"])
            body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
            assert (
                await client.post(f"{url}/v1/chat/completions", json=body)
            ).status_code == 200  # old config
        daemon.request_shutdown()


async def test_a_reload_that_drops_the_keys_of_a_network_daemon_is_refused(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    path = tmp_path / "c.toml"
    model = fake_model()
    keys = 'api_keys = ["sk-api-0123456789abcdef"]\nadmin_keys = ["sk-admin-0123456789abcdef"]\n'

    def write(server_keys: str) -> None:
        path.write_text(f'[server]\nhost = "0.0.0.0"\nport = 0\n{server_keys}[models.m]\npath = "{model}"\n')

    def load() -> RouteTable:
        return routes_for(load_config(path), fake_binary)

    write("")
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 \(not loopback\) without"):
        Daemon(load(), load)  # the same rule at start as on reload
    write(keys)
    daemon = Daemon(load(), load)
    admin = {"authorization": "Bearer sk-admin-0123456789abcdef"}
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        bound = await nursery.start(daemon.run)
        url = f"http://127.0.0.1:{bound.rsplit(':', 1)[1]}"
        write("")  # the keys deleted from the file
        refused = await client.post(f"{url}/api/reload", headers=admin)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_config"
        [problem] = refused.json()["problems"]
        assert "without server.api_keys and server.admin_keys" in problem and str(path) in problem
        assert (await client.get(f"{url}/api/sidecars")).status_code == 401  # the old keys still rule
        assert (await client.get(f"{url}/api/sidecars", headers=admin)).status_code == 200
        daemon.request_shutdown()


async def test_concurrent_reloads_take_turns(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\nport = 0\n[models.m]\npath = "{fake_model()}"\n')
    loading = threading.Lock()
    overlaps: list[bool] = []

    def load() -> RouteTable:
        overlapped = not loading.acquire(blocking=False)
        overlaps.append(overlapped)
        try:
            time.sleep(0.2)  # a slow read: a second reload arrives meanwhile
            return routes_for(load_config(path), fake_binary)
        finally:
            if not overlapped:
                loading.release()

    daemon = Daemon(load(), load)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        url = await nursery.start(daemon.run)
        answers: list[int] = []

        async def reload() -> None:
            answers.append((await client.post(f"{url}/api/reload")).status_code)

        async with trio.open_nursery() as reloads:
            reloads.start_soon(reload)
            reloads.start_soon(reload)
            reloads.start_soon(daemon.reload)  # as SIGHUP does
        assert answers == [200, 200]
        assert overlaps == [False] * 4  # the first load, then three reloads, one at a time
        daemon.request_shutdown()


async def test_serve_reads_its_config_once_and_says_where_it_listens_once(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    port = free_port()
    (tmp_path / "swap.yaml").write_text(
        f"models:\n  m:\n    cmd: {fake_binary.path} --port ${{PORT}} --model {fake_model()}\n"
        "groups:\n  g:\n    members: [m]\n"
    )
    command = [sys.executable, "-m", "orchestrator", "serve", "--config", str(tmp_path / "swap.yaml")]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, [*command, "--port", str(port)], stderr=subprocess.PIPE, check=False)
        )
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(30):
            while b"serving on" not in seen:
                seen += await process.stderr.receive_some(65536)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            while chunk := await process.stderr.receive_some(65536):
                seen += chunk
    text = seen.decode()
    assert text.count("groups: not mapped") == 1, text
    assert text.count(f"serving on http://127.0.0.1:{port}") == 1 and "Running on" not in text, text


async def test_a_draining_daemon_says_503_on_health_while_it_still_serves_for_the_drain_notice(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    server = {"drain_notice_s": 30, "agent_port": 0}
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, server=server)
    daemon = Daemon(routes_for(config, fake_binary))
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        url = await nursery.start(daemon.run)
        assert (await client.get(f"{url}/health")).json()["status"] == "ok"
        assert daemon.agent_port is not None
        fleet = (await client.get(f"{url}/api/fleet")).json()
        assert fleet["agent_port"] == daemon.agent_port and not fleet["draining"]
        daemon.request_shutdown()

        async def draining() -> bool:
            return (await client.get(f"{url}/health")).status_code == 503

        await poll_until(draining)
        assert (await client.get(f"{url}/health")).json()["status"] == "draining"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.agent_port)
        async with stream:
            await stream.send_all(b"loaded m\n")
            assert await stream.receive_some(100) == b"drain\n"  # HAProxy's agent check
        nursery.cancel_scope.cancel()  # as a second signal would: no need to wait out the notice
