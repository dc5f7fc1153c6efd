"""No orphans: the daemon's children die with it, even when it is SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import trio

from orchestrator.bundled import LlamaServerBinary
from orchestrator.watchdog import kill_registered
from tests.conftest import free_port, pid_alive, poll_until, wait_until


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
