"""systemd's notify protocol on a real AF_UNIX datagram socket: the notifier alone, then a real
`orchestrator serve` process told to notify it."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import trio

from orchestrator.routing import LlamaServerBinary
from orchestrator.sdnotify import Notifier
from tests.conftest import free_port


class Manager:
    """A service manager's end: a datagram socket, read by a thread so a blocked trio loop cannot hide
    messages; each message is kept with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self.received: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append((time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()

    def with_field(self, name: str) -> list[tuple[float, dict[str, str]]]:
        return [(at, fields) for at, fields in self.received if name in fields]

    async def wait_for(self, predicate: Callable[[dict[str, str]], bool], after: int = 0) -> dict[str, str]:
        """The first message from index ``after`` on that satisfies ``predicate``."""
        with trio.fail_after(30):
            while True:
                for _at, fields in self.received[after:]:
                    if predicate(fields):
                        return fields
                await trio.sleep(0.01)


@contextmanager
def manager(tmp_path: Path) -> Iterator[Manager]:
    listening = Manager(tmp_path / "notify.sock")
    try:
        yield listening
    finally:
        listening.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    quiet = Notifier({})
    quiet.ready("x")  # no socket: does nothing, fails nothing
    assert quiet.watchdog_interval_s is None


async def test_messages_and_an_abstract_address(tmp_path: Path) -> None:
    with manager(tmp_path) as systemd:
        notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path)})
        notifier.ready("serving")
        notifier.status("serving")  # unchanged: not sent again
        notifier.status("busy")
        before = time.monotonic_ns() // 1000
        notifier.reloading()
        notifier.stopping()
        await systemd.wait_for(lambda f: "STOPPING" in f)
        messages = [fields for _at, fields in systemd.received]
        assert messages[0] == {"READY": "1", "STATUS": "serving"}
        assert messages[1] == {"STATUS": "busy"}
        assert (
            messages[2]["RELOADING"] == "1" and 0 <= int(messages[2]["MONOTONIC_USEC"]) - before < 5_000_000
        )
        assert messages[3]["STOPPING"] == "1" and len(messages) == 4
        notifier.close()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0llama-sidecar-test-{time.monotonic_ns()}")
    name = abstract.getsockname()
    Notifier({"NOTIFY_SOCKET": "@" + (name[1:] if isinstance(name, str) else name[1:].decode())}).ready("x")
    assert abstract.recv(100) == b"READY=1\nSTATUS=x\n"
    abstract.close()


async def test_watchdog_pings_come_from_the_loop_and_stop_while_it_is_blocked(tmp_path: Path) -> None:
    with manager(tmp_path) as systemd:
        notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "100000"})
        assert notifier.watchdog_interval_s == 0.05  # half of what systemd asks
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            await systemd.wait_for(lambda f: "WATCHDOG" in f, after=3)  # a few pings in
            blocked_at = time.monotonic()
            time.sleep(1.0)  # noqa: ASYNC251 - the fault: a wedged event loop
            unblocked_at = time.monotonic()
            count = len(systemd.received)
            await systemd.wait_for(lambda f: "WATCHDOG" in f, after=count + 2)
            nursery.cancel_scope.cancel()
        pings = [at for at, _fields in systemd.with_field("WATCHDOG")]
        during = [at for at in pings if blocked_at + 0.02 < at < unblocked_at]
        assert during == []  # nothing while the loop could not run
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert max(gaps) > 0.9  # the block shows as one long gap...
        assert statistics.median(gaps) < 0.1  # ...otherwise a ping every 0.05 s
    assert (
        Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}).watchdog_interval_s
        is None
    )


async def test_a_real_serve_process_tells_systemd_its_state(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\nport = {port}\n[llama_server]\nbin = "{fake_binary.path}"\n'
        f'[models.m]\npath = "{fake_model()}"\n'
    )
    url = f"http://127.0.0.1:{port}"
    with manager(tmp_path) as systemd:
        environment = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"}
        command = [sys.executable, "-m", "orchestrator", "serve", "--config", str(config)]
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
            serve = partial(
                trio.run_process, command, env={**os.environ, **environment}, stderr=subprocess.DEVNULL
            )
            process: trio.Process = await nursery.start(serve)
            ready = await systemd.wait_for(lambda f: f.get("READY") == "1")
            assert (await client.get(f"{url}/health")).status_code == 200  # ready means it answers
            assert ready["STATUS"].startswith(f"serving on {url}; 0 sidecar(s)")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
            await systemd.wait_for(lambda f: "1 sidecar(s): 1 ready" in f.get("STATUS", ""))

            count = len(systemd.received)
            process.send_signal(signal.SIGHUP)
            reloading = await systemd.wait_for(lambda f: f.get("RELOADING") == "1", after=count)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            await systemd.wait_for(lambda f: f.get("READY") == "1", after=count)

            process.send_signal(signal.SIGTERM)
            await systemd.wait_for(lambda f: f.get("STOPPING") == "1", after=count)
            with trio.fail_after(30):
                await process.wait()
        assert process.returncode == 0
        pings = [at for at, _fields in systemd.with_field("WATCHDOG")]
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert len(pings) >= 3 and max(gaps) < 0.4  # always within the period systemd asked for
