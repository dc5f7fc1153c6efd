"""The least a proxy on the required stack can cost: a reference point for `bench overhead`, not a product.

A bare ASGI app on hypercorn and trio that relays each request to one
llama-server over kept raw sockets: no routing, auth, limits, metrics, pool or
error handling. What it costs per request and per chunk is the floor that
hypercorn, trio and one loopback hop set before any of llama-sidecar's own work.

    llama-server --host 127.0.0.1 --port 5901 -m MODEL.gguf -c 2048 -t 1 &
    python ops/bench/floor_proxy.py --child-port 5901 --port 18600 &
    orchestrator bench overhead --compare http://127.0.0.1:18600 \\
        --compare-direct http://127.0.0.1:5901 --compare-pid $!
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

Message = dict[str, Any]
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding"}


class Reader:
    """Bytes from the child, taken up to a separator or by count."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the child closed the connection")
        self.buffer += data

    async def until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            await self._more()
        taken, self.buffer = self.buffer[:end], self.buffer[end + len(separator) :]
        return taken

    async def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._more()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken


class FloorProxy:
    """The ASGI app: one request to the child per request, its answer relayed piece by piece."""

    def __init__(self, child_port: int) -> None:
        self.child_port = child_port
        self.idle: list[trio.SocketStream] = []

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        head = b"%s %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" % (
            scope["method"].encode(),
            scope["raw_path"],
        )
        request = head + b"content-length: %d\r\n\r\n" % len(body) + body
        stream, reader, answer_head = await self._exchange(request)
        status, headers, length = parse_head(answer_head)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if length is not None:
            await send({"type": "http.response.body", "body": await reader.exactly(length)})
        else:  # chunked: each chunk is relayed as it comes
            while size := int(await reader.until(b"\r\n"), 16):
                piece = await reader.exactly(size)
                await reader.exactly(2)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await reader.until(b"\r\n")
            await send({"type": "http.response.body", "body": b""})
        self.idle.append(stream)

    async def _exchange(self, request: bytes) -> tuple[trio.SocketStream, Reader, bytes]:
        while True:  # a kept connection the child has closed meanwhile is retried on a new one
            reused = bool(self.idle)
            stream = self.idle.pop() if reused else await trio.open_tcp_stream("127.0.0.1", self.child_port)
            reader = Reader(stream)
            try:
                await stream.send_all(request)
                return stream, reader, await reader.until(b"\r\n\r\n")
            except (EOFError, trio.BrokenResourceError):
                if not reused:
                    raise


def parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]], int | None]:
    """Status, the headers to pass on, and the Content-Length (None: chunked)."""
    status_line, *lines = head.split(b"\r\n")
    headers, length = [], None
    for line in lines:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        if name not in HOP_BY_HOP:
            headers.append((name, value))
    return int(status_line.split()[1]), headers, length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child-port", type=int, required=True, help="the llama-server's port on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the port to serve on, on 127.0.0.1")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    try:
        trio.run(serve, cast(ASGIFramework, FloorProxy(args.child_port)), config)
    except* KeyboardInterrupt:  # Ctrl-C (or kill -INT) is how it stops; in a nursery it comes grouped
        pass


if __name__ == "__main__":
    main()
