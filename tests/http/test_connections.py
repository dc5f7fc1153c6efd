"""A client that stops reading cannot hold up the daemon's shutdown."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import wrap_client_stream

from orchestrator.http.connections import sever_connections
from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from tests.conftest import make_config, pid_alive, routes_for, wait_until

SAFETY_NET_S = 20.0  # if the daemon does not cut the client, the test does, and fails instead of hanging


async def test_a_websocket_client_that_stopped_reading_is_cut_after_the_grace(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(
        tmp_path,
        {"m": {"path": fake_model()}},
        llama_server={"health_interval_s": 600},
        server={"shutdown_grace_s": 0.5},
    )
    daemon = Daemon(routes_for(config, fake_binary))
    # A reader that reads nothing, with a small receive buffer: the daemon's writes to it fill
    # the socket, and hypercorn's shielded write then waits for it for ever.
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)

    net = trio.CancelScope(shield=True)  # shielded from the daemon's cancellations, ended by us

    async def safety_net() -> None:
        with net:
            await trio.sleep(SAFETY_NET_S)
            sock.close()

    async with trio.open_nursery() as clients:
        async with trio.open_nursery() as serving:
            url = await serving.start(daemon.run)
            async with httpx.AsyncClient(timeout=30) as client:
                child = (await client.post(f"{url}/api/models/m/load")).json()["sidecar"]
                await sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
                resource = f"/ws/logs/{child['key']}?history=0"
                await wrap_client_stream(clients, trio.SocketStream(sock), "127.0.0.1", resource)
                control = {"flood": 20_000, "batch": 1000, "pause_s": 0}
                await client.post(f"http://127.0.0.1:{child['port']}/fake/control", json=control)
            assert daemon.pool is not None
            [sidecar] = daemon.pool.sidecars()
            await wait_until(lambda: sidecar.stderr.tail(1)[0].startswith("flood 19999 "))
            began = trio.current_time()
            clients.start_soon(safety_net)
            daemon.request_shutdown()
        took = trio.current_time() - began
        net.cancel()
        clients.cancel_scope.cancel()
    assert took < SAFETY_NET_S / 2, f"shutdown took {took:.1f} s"  # the grace, a second, then the cut
    assert "cut 1 connection(s) whose clients stopped reading" in caplog.text
    assert not pid_alive(child["pid"])


def test_nothing_is_cut_on_a_port_with_no_connections() -> None:
    with socket.socket() as idle:
        idle.bind(("127.0.0.1", 0))
        assert sever_connections(idle.getsockname()[1]) == 0
