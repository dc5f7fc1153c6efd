"""HTTP/1.1 to a child: keep-alive, streaming without buffering, stale connections, timeouts, closing.

The child is a small scripted h11 server, so each behaviour of a real one
(closing idle connections, silence, hanging up) happens exactly when a test wants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager

import h11
import pytest
import trio

from orchestrator.errors import UpstreamError, UpstreamTimeoutError
from orchestrator.supervisor.upstream import Upstream
from tests.conftest import free_port, wait_until

Handler = Callable[[trio.SocketStream, h11.Connection], Awaitable[bool]]  # True: keep the connection


async def respond(stream: trio.SocketStream, connection: h11.Connection, body: bytes) -> None:
    head = h11.Response(status_code=200, headers=[("content-length", str(len(body))), ("x-child", "yes")])
    await stream.send_all(connection.send(head) + connection.send(h11.Data(data=body)))
    await stream.send_all(connection.send(h11.EndOfMessage()))


class ScriptedChild:
    """Answers each request by its path; counts connections, requests and clients that left."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed_by_client = 0
        self.requests: list[str] = []
        self.client_left = trio.Event()
        self.alive = trio.CancelScope()
        self.dead = trio.Event()
        self.proceed_send, self.proceed = trio.open_memory_channel[None](0)
        self.handlers: dict[str, Handler] = {
            "/plain": self.plain,
            "/stream": self.stream,
            "/then-close": self.then_close,
            "/silent": self.silent,
            "/one-then-silent": self.one_then_silent,
            "/hang-up": self.hang_up,
            "/until-gone": self.until_gone,
        }

    async def serve(self, *, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        with self.alive:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self.handle, listeners)
        self.dead.set()

    async def die(self) -> None:
        """Stop listening and drop every connection, as a crashed process does."""
        self.alive.cancel()
        await self.dead.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        connection = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                target = await self.read_request(stream, connection)
                if target is None:
                    self.closed_by_client += 1
                    return
                if not await self.handlers[target](stream, connection):
                    return
                connection.start_next_cycle()

    @staticmethod
    async def read_request(stream: trio.SocketStream, connection: h11.Connection) -> str | None:
        target = None
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                target = event.target.decode()
            elif isinstance(event, h11.EndOfMessage):
                return target
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def plain(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        self.requests.append("/plain")
        await respond(stream, connection, b"ok")
        return True

    async def stream(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        """Three chunks, each only when the test says so: the client must get each one before the next."""
        self.requests.append("/stream")
        head = h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])
        await stream.send_all(connection.send(head))
        for chunk in (b"one ", b"two ", b"three"):
            await self.proceed.receive()
            await stream.send_all(connection.send(h11.Data(data=chunk)))
        await stream.send_all(connection.send(h11.EndOfMessage()))
        return True

    async def then_close(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        """Answers, then closes the kept-alive connection as llama-server does with idle ones."""
        self.requests.append("/then-close")
        await respond(stream, connection, b"ok")
        return False

    async def silent(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        await trio.sleep_forever()
        return False  # never reached

    async def one_then_silent(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        head = h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])
        await stream.send_all(connection.send(head) + connection.send(h11.Data(data=b"one")))
        await trio.sleep_forever()
        return False  # never reached

    async def hang_up(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        return False

    async def until_gone(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        head = h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])
        await stream.send_all(connection.send(head) + connection.send(h11.Data(data=b"one")))
        if await stream.receive_some(1) == b"":
            self.client_left.set()
        return False


@asynccontextmanager
async def scripted_child() -> AsyncIterator[tuple[ScriptedChild, Upstream]]:
    child = ScriptedChild()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(child.serve)
        upstream = Upstream("127.0.0.1", port, "[sidecar:test]")
        try:
            yield child, upstream
        finally:
            upstream.close()
            nursery.cancel_scope.cancel()


async def test_a_response_streams_chunk_by_chunk_and_its_connection_serves_the_next_request() -> None:
    async with scripted_child() as (child, upstream):
        response = await upstream.request(
            "POST", "/stream", [(b"content-type", b"application/json")], b"{}", 5
        )
        assert response.status == 200 and response.header("transfer-encoding") == "chunked"
        async with aclosing(response.chunks()) as chunks:
            for expected in (b"one ", b"two ", b"three"):
                await child.proceed_send.send(None)  # the child sends the next chunk only now
                assert await chunks.__anext__() == expected
            with pytest.raises(StopAsyncIteration):
                await chunks.__anext__()
        response.close()

        plain = await upstream.request("POST", "/plain", [], b"", 5)
        assert plain.header("x-child") == "yes" and await plain.read() == b"ok"
    assert child.connections == 1 and child.requests == ["/stream", "/plain"]


async def test_a_kept_alive_connection_the_child_closed_is_resent_on_a_fresh_one() -> None:
    async with scripted_child() as (child, upstream):
        assert await (await upstream.request("POST", "/then-close", [], b"", 5)).read() == b"ok"
        # The pooled connection is closed by now; the request goes again on a new one, once.
        assert await (await upstream.request("POST", "/plain", [], b"", 5)).read() == b"ok"
    assert child.connections == 2 and child.requests == ["/then-close", "/plain"]


async def test_an_abandoned_response_closes_its_connection_so_the_child_sees_the_client_leave() -> None:
    async with scripted_child() as (child, upstream):
        response = await upstream.request("POST", "/until-gone", [], b"", 5)
        async with aclosing(response.chunks()) as chunks:
            assert await chunks.__anext__() == b"one"
        response.close()
        with trio.fail_after(5):
            await child.client_left.wait()
        assert await (await upstream.request("POST", "/plain", [], b"", 5)).read() == b"ok"
    assert child.connections == 2  # the abandoned connection was not reused


async def test_silence_before_the_headers_or_between_chunks_is_a_timeout() -> None:
    async with scripted_child() as (_child, upstream):
        with pytest.raises(UpstreamTimeoutError, match=r"\[sidecar:test\] sent nothing for 0\.2 s"):
            await upstream.request("POST", "/silent", [], b"", 0.2)
        response = await upstream.request("POST", "/one-then-silent", [], b"", 0.2)
        async with aclosing(response.chunks()) as chunks:
            assert await chunks.__anext__() == b"one"
            with pytest.raises(UpstreamTimeoutError, match=r"sent nothing for 0\.2 s"):
                await chunks.__anext__()
        response.close()


async def test_a_child_that_does_not_listen_or_hangs_up_is_an_upstream_error() -> None:
    nobody = Upstream("127.0.0.1", free_port(), "[sidecar:gone]")
    with pytest.raises(
        UpstreamError,
        match=r"\[sidecar:gone\] did not accept a connection: ECONNREFUSED \(Connection refused\)",
    ):
        await nobody.request("POST", "/plain", [], b"", 5)
    async with scripted_child() as (_child, upstream):
        with pytest.raises(UpstreamError, match="did not answer") as failure:
            await upstream.request("POST", "/hang-up", [], b"", 5)  # a fresh connection: not resent
        assert not isinstance(failure.value, UpstreamTimeoutError)


async def test_a_child_that_died_with_our_request_on_a_kept_alive_connection_did_not_answer() -> None:
    async with scripted_child() as (child, upstream):
        assert await (await upstream.request("POST", "/plain", [], b"", 5)).read() == b"ok"  # now kept alive
        await child.die()
        with pytest.raises(UpstreamError, match=r"\[sidecar:test\] did not answer") as failure:
            await upstream.request("POST", "/plain", [], b"", 5)  # resent, but nothing listens any more
        assert not isinstance(failure.value, UpstreamTimeoutError)


async def test_closing_ends_idle_connections_and_those_released_later_and_refuses_new_requests() -> None:
    async with scripted_child() as (child, upstream):
        busy = await upstream.request("POST", "/plain", [], b"", 5)
        idle = await upstream.request("POST", "/plain", [], b"", 5)
        assert await idle.read() == b"ok"  # read to its end: its connection waits for the next request
        assert child.connections == 2 and child.closed_by_client == 0

        upstream.close()  # the child process is gone
        await wait_until(lambda: child.closed_by_client == 1, timeout_s=5)  # the idle connection
        assert await busy.read() == b"ok"
        await wait_until(lambda: child.closed_by_client == 2, timeout_s=5)  # released: closed, not kept
        with pytest.raises(UpstreamError, match=r"\[sidecar:test\] has exited"):
            await upstream.request("POST", "/plain", [], b"", 5)  # its port may be another child's now
        assert child.connections == 2
