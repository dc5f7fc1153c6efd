"""No orphans: the daemon's children die with it, even when it is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import trio

from orchestrator.dirs import state_dir
from orchestrator.routing import LlamaServerBinary
from orchestrator.supervisor.watchdog import kill_registered
from tests.conftest import free_port, make_config, pid_alive, poll_until, running_daemon, wait_until


async def test_sigkilled_daemon_takes_its_children_along(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    port = free_port()
    (tmp_path / "c.toml").write_text(
        f'[server]\nport = {port}\n[llama_server]\nbin = "{fake_binary.path}"\n'
        f'[models.a]\npath = "{fake_model("a")}"\n[models.b]\npath = "{fake_model("b")}"\n'
    )
    url = f"http://127.0.0.1:{port}"
    daemon = await trio.lowlevel.open_process(
        [sys.executable, "-m", "orchestrator", "serve", "--config", str(tmp_path / "c.toml")],
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def listening() -> bool:
                try:
                    return (await client.get(f"{url}/health")).status_code == 200
                except httpx.ConnectError:
                    return False  # not yet

            await poll_until(listening, timeout_s=20)
            pids = [
                (await client.post(f"{url}/api/models/{name}/load")).json()["sidecar"]["pid"] for name in "ab"
            ]
        assert all(pid_alive(pid) for pid in pids)
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
        await wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout_s=2)
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()


def test_a_reused_pid_is_never_killed() -> None:
    unrelated = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        created = psutil.Process(unrelated.pid).create_time()
        assert kill_registered({unrelated.pid: created - 5.0}) == []  # same pid, another process
        assert unrelated.poll() is None
        assert kill_registered({unrelated.pid: created}) == [unrelated.pid]
        assert unrelated.wait(timeout=5) == -signal.SIGKILL
    finally:
        if unrelated.poll() is None:
            unrelated.kill()
            unrelated.wait()


async def test_a_new_daemon_stops_what_a_dead_instance_left_and_nothing_else(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    leftover = await trio.lowlevel.open_process(
        [fake_binary.path, "--model", fake_model("left"), "--port", str(free_port())],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    unrelated = await trio.lowlevel.open_process(["sleep", "30"], start_new_session=True)  # pid "reused"
    try:
        children = {
            str(leftover.pid): psutil.Process(leftover.pid).create_time(),
            str(unrelated.pid): psutil.Process(unrelated.pid).create_time() - 5.0,
        }
        dead_owner = {"pid": os.getpid(), "created": 1.0}  # this pid, but not the process that wrote it
        state_file = state_dir() / "children-999999-0.json"
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"owner": dead_owner, "children": children}))
        config = make_config(tmp_path, {"m": {"path": fake_model()}})
        async with running_daemon(config, fake_binary):
            await wait_until(lambda: leftover.poll() is not None, timeout_s=5)
            assert unrelated.poll() is None  # never touched
            assert not state_file.exists()  # swept and forgotten
    finally:
        for process in (leftover, unrelated):
            if process.poll() is None:
                process.kill()
            await process.wait()


async def test_a_second_daemon_leaves_a_live_daemons_children_alone(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with running_daemon(config, fake_binary) as (url, _first), httpx.AsyncClient(timeout=30) as client:
        child = (await client.post(f"{url}/api/models/m/load")).json()["sidecar"]["pid"]
        [recorded] = [
            json.loads(path.read_text()) for path in state_dir().glob("children-*.json")
            if str(child) in path.read_text()
        ]  # fmt: skip
        assert recorded["owner"]["pid"] == os.getpid()
        async with running_daemon(config, fake_binary) as (other_url, _second):
            assert (await client.get(f"{other_url}/health")).status_code == 200
            assert pid_alive(child)  # the second daemon's sweep skipped the live owner's file
            ours = [p for p in state_dir().glob("children-*.json") if f"children-{os.getpid()}-" in p.name]
            assert len(ours) == 2  # one file per daemon, though both listen on port 0
    assert not any(path.exists() for path in ours)  # clean exits leave nothing to sweep
