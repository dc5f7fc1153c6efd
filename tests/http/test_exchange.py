"""The end of each exchange: idle keep-alive connections stay managed after every one; the last send.

Agents hold pooled connections to the daemon between requests. Such an idle
connection must be closed when the daemon shuts down (not wait out
server.shutdown_grace_s), whichever route its last request took.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import cast

import h11
import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

from orchestrator.http.exchange import ExchangeEnd
from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from tests.conftest import make_config, routes_for


async def exchange(
    stream: trio.SocketStream, connection: h11.Connection, method: str, target: str, body: bytes = b""
) -> int:
    """One request and its whole response on a kept-alive connection; the status."""
    headers = [("host", "127.0.0.1"), ("content-length", str(len(body)))]
    headers.append(("content-type", "application/json"))
    request = h11.Request(method=method, target=target, headers=headers)
    await stream.send_all(
        connection.send(request) + connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage())
    )
    status = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            connection.start_next_cycle()  # keep-alive: the same connection serves the next request
            return status


async def test_idle_keep_alive_connections_are_closed_at_shutdown_without_waiting_out_the_grace(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, server={"shutdown_grace_s": 60})
    daemon = Daemon(routes_for(config, fake_binary))
    stopped = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[str]) -> None:
        await daemon.run(task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        plain, streamed = json.dumps(chat).encode(), json.dumps({**chat, "stream": True}).encode()
        idle = []
        for target, body in (("/health", b""), ("/v1/chat/completions", plain),
                             ("/v1/chat/completions", streamed), ("/v1/models", b"")):  # fmt: skip
            stream = await trio.open_tcp_stream(host, int(port))
            connection = h11.Connection(h11.CLIENT)
            assert await exchange(stream, connection, "POST" if body else "GET", target, body) == 200
            assert await exchange(stream, connection, "GET", "/health") == 200  # it was kept alive
            idle.append(stream)

        daemon.request_shutdown()
        with trio.fail_after(5):  # far less than the 60 s grace: idle connections are not in flight
            for stream in idle:
                assert await stream.receive_some(1) == b""  # the server closed it
            await stopped.wait()
        for stream in idle:
            await stream.aclose()


async def test_a_small_last_body_is_sent_in_one_bounded_send_and_a_big_one_before_it_unbounded() -> None:
    sent: list[tuple[int, bool, bool]] = []  # body size, more_body, bounded (the shielded last send)

    async def record(message: ASGISendEvent) -> None:
        if message["type"] == "http.response.body":
            bounded = trio.current_effective_deadline() < math.inf
            sent.append((len(message.get("body", b"")), message.get("more_body", False), bounded))

    def app_sending(size: int) -> ASGIFramework:
        async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": False})
            await send({"type": "http.response.body", "body": b"x" * size, "more_body": False})

        return app

    scope = cast(Scope, {"type": "http", "path": "/", "headers": []})
    await ExchangeEnd(app_sending(1000))(scope, _no_receive, record)
    assert sent == [(1000, False, True)]
    sent.clear()
    await ExchangeEnd(app_sending(1 << 20))(scope, _no_receive, record)
    assert sent == [(1 << 20, True, False), (0, False, True)]  # a slow client may take long over 1 MiB


async def _no_receive() -> ASGIReceiveEvent:
    raise AssertionError("the app does not receive")
