"""HTTP/1.1 to one llama-server child: kept-alive connections, streamed responses, an idle timeout.

This is the proxy's hot path, so it is a small HTTP/1.1 reader (http1) on
plain sockets rather than a general client: per request httpx spent about
0.95 ms of CPU and h11 on trio sockets 0.28 ms (measured against the fake
llama-server), and on a small machine every millisecond the daemon spends is
taken from generation.

One ``Upstream`` belongs to one child process and is closed when it exits, so
a connection never outlives its process or reaches a later child on the same
port. A response is read only as fast as the client takes it (back-pressure,
no buffering). A response abandoned before its end closes its connection,
which is how llama-server learns that the client left and stops generating;
a response read to its end returns its connection for the next request.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from contextlib import aclosing

import trio

from orchestrator.errors import (
    MalformedResponseError,
    StaleConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from orchestrator.http1 import ResponseHead, ResponseReader, encode_chunk, encode_head, encode_request

CONNECT_TIMEOUT_S = 5.0
MAX_IDLE_CONNECTIONS = 32
RECEIVE_BYTES = 65536
_CONNECTING = {errno.EINPROGRESS, errno.EWOULDBLOCK, getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK)}


class _Connection:
    """One socket and the response being read from it.

    The socket is a plain non-blocking one, read and written directly and waited
    for with trio's wait_readable / wait_writable: a chunk then costs one wait and
    one read, where a trio stream's receive would try a read first (which fails
    when the chunk is not there yet) and add a scheduler pass after each call.
    """

    def __init__(self, sock: socket.socket, reused: bool = False) -> None:
        self.sock = sock
        self.reader = ResponseReader()
        self.reused = reused

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)  # a task still waiting on it is woken, not left hanging
        self.sock.close()

    async def send(self, data: bytes, idle_timeout_s: float) -> None:
        """Send ``data``; a child that takes none of it for ``idle_timeout_s`` is as silent as one
        that sends nothing."""
        view = memoryview(data)
        with trio.move_on_after(idle_timeout_s) as waiting:
            while view:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:  # its receive buffer is full: wait until it takes more
                    await trio.lowlevel.wait_writable(self.sock)
        if waiting.cancelled_caught:
            raise TimeoutError

    async def receive(self, idle_timeout_s: float) -> None:
        """Wait at most ``idle_timeout_s`` for what the child sends next, and hand it to the reader."""
        while True:
            with trio.move_on_after(idle_timeout_s) as waiting:
                await trio.lowlevel.wait_readable(self.sock)
            if waiting.cancelled_caught:
                raise TimeoutError
            try:
                self.reader.feed(self.sock.recv(RECEIVE_BYTES))
                return
            except BlockingIOError:  # woken with nothing to read after all: wait again
                continue


class UpstreamResponse:
    """The child's response: status and headers at once, the body as it comes."""

    def __init__(
        self, upstream: Upstream, connection: _Connection, head: ResponseHead, idle_timeout_s: float
    ) -> None:
        self.status = head.status
        self.headers = head.headers  # names in lower case
        self._upstream = upstream
        self._connection: _Connection | None = connection
        self._idle_timeout_s = idle_timeout_s
        self.complete = False  # the whole body has arrived (true while its last chunk is being handed on)

    def header(self, name: str) -> str:
        """A response header's value ('' if absent); ``name`` in lower case."""
        wanted = name.encode()
        return next((value.decode("latin-1") for key, value in self.headers if key == wanted), "")

    async def chunks(self) -> AsyncGenerator[bytes]:
        """The body as the child sends it; UpstreamError (or UpstreamTimeoutError) if it breaks off.

        Each piece is what one read brought (de-chunked). When a piece is the
        last, ``complete`` is already true as it is handed on, so the relay can
        end the client's response with it rather than after it.
        """
        connection = self._connection
        assert connection is not None, "the response was closed"
        reader = connection.reader
        while True:
            try:
                data = reader.body()
                if not data and not reader.ended:
                    await connection.receive(self._idle_timeout_s)
                    continue
            except TimeoutError:
                raise self._upstream.timeout(self._idle_timeout_s) from None
            except (MalformedResponseError, OSError) as error:
                raise self._upstream.failure("failed mid-response", error) from error
            self.complete = reader.ended
            if data:
                yield data
            if self.complete:
                return

    async def read(self) -> bytes:
        """The whole body (for small responses), then close."""
        try:
            async with aclosing(self.chunks()) as chunks:
                return b"".join([chunk async for chunk in chunks])
        finally:
            self.close()

    def close(self) -> None:
        """Give the connection back if the response was read to its end; else close it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._upstream.release(connection)


class Upstream:
    """Kept-alive connections to one child process at ``host:port``."""

    def __init__(self, host: str, port: int, label: str) -> None:
        self.host, self.port = host, port
        self._authority = f"[{host}]:{port}".encode() if ":" in host else f"{host}:{port}".encode()
        self._label = label  # names the child in error messages
        self._idle: list[_Connection] = []
        self._closed = False

    def close(self) -> None:
        """The child is gone: close the idle connections; the busy ones close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def release(self, connection: _Connection) -> None:
        if connection.reader.reusable and not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
            connection.reader.next_response()
            connection.reused = True
            self._idle.append(connection)
        else:
            connection.close()

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        idle_timeout_s: float,
    ) -> UpstreamResponse:
        """Send a request and wait (at most ``idle_timeout_s``) for the response's status and headers.

        A kept-alive connection the child closed meanwhile (llama-server closes
        idle ones) fails before any answer; the request then goes again on the
        next one, a fresh connection at the latest. That is safe: the child
        never read it. A fresh connection that fails is the child's failure.
        """
        if self._closed:  # its port may belong to another child by now
            raise UpstreamError(f"{self._label} has exited")
        request = encode_request(method, target, [(b"host", self._authority), *headers], body)
        stale_cause: BaseException | None = None  # why the last kept-alive connection failed
        while True:
            if self._idle:
                connection = self._idle.pop()
            else:
                try:
                    connection = await self._connect()
                except UpstreamError as refused:
                    if stale_cause is None:
                        raise
                    # It closed a connection that had our request and takes no new one: it died on it.
                    raise self.failure("did not answer", stale_cause) from refused
            try:
                head = await self._exchange(connection, request, idle_timeout_s)
            except StaleConnectionError as stale:
                connection.close()
                if connection.reused:
                    stale_cause = stale.__cause__
                    continue  # the next try takes another kept-alive connection, or a fresh one
                raise self.failure("did not answer", stale.__cause__) from stale.__cause__
            except BaseException:
                connection.close()
                raise
            return UpstreamResponse(self, connection, head, idle_timeout_s)

    async def request_streaming(
        self,
        method: str,
        *,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        first: bytes,
        rest: AsyncIterable[bytes],
        length: int | None,
        idle_timeout_s: float,
    ) -> UpstreamResponse:
        """Send a request whose body comes in pieces, ``first`` then ``rest`` (chunked when ``length`` is
        None), on a fresh connection (a stale kept-alive one could not be retried: the body is not
        kept), and wait for the response's status and headers."""
        if self._closed:
            raise UpstreamError(f"{self._label} has exited")
        head = encode_head(method, target, [(b"host", self._authority), *headers], length)
        connection = await self._connect()
        try:
            await self._send_body(
                connection,
                head=head,
                first=first,
                rest=rest,
                chunked=length is None,
                idle_timeout_s=idle_timeout_s,
            )
            return UpstreamResponse(self, connection, await self._exchange(connection, b"", idle_timeout_s),
                                    idle_timeout_s)  # fmt: skip
        except StaleConnectionError as broken:  # a fresh connection's failure is the child's
            connection.close()
            raise self.failure("did not answer", broken.__cause__) from broken.__cause__
        except BaseException:
            connection.close()
            raise

    async def _send_body(
        self,
        connection: _Connection,
        *,
        head: bytes,
        first: bytes,
        rest: AsyncIterable[bytes],
        chunked: bool,
        idle_timeout_s: float,
    ) -> None:
        try:
            await connection.send(
                head + (encode_chunk(first) if chunked and first else first), idle_timeout_s
            )
            async for piece in rest:
                await connection.send(encode_chunk(piece) if chunked else piece, idle_timeout_s)
            if chunked:
                await connection.send(encode_chunk(b""), idle_timeout_s)
        except TimeoutError:
            raise self.timeout(idle_timeout_s) from None
        except OSError as error:
            raise self.failure("stopped taking the request", error) from error

    async def get(self, target: str, timeout_s: float) -> tuple[int, bytes]:
        """A small GET (health, props): its status and whole body, each wait bounded by ``timeout_s``."""
        response = await self.request("GET", target, [], b"", timeout_s)
        return response.status, await response.read()

    async def _exchange(self, connection: _Connection, request: bytes, idle_timeout_s: float) -> ResponseHead:
        try:
            if request:
                await connection.send(request, idle_timeout_s)
            while (head := connection.reader.head()) is None:
                await connection.receive(idle_timeout_s)
            return head
        except TimeoutError:
            raise self.timeout(idle_timeout_s) from None
        except (MalformedResponseError, OSError) as error:
            raise StaleConnectionError from error

    async def _connect(self) -> _Connection:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request goes in one write
            failed = sock.connect_ex((self.host, self.port))
            if failed in _CONNECTING:  # under way: done (or refused) once writable
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    await trio.lowlevel.wait_writable(sock)
                failed = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if failed:
                raise OSError(failed, os.strerror(failed))
        except (trio.TooSlowError, OSError) as error:  # not listening (any more), or not accepting
            sock.close()
            raise self.failure("did not accept a connection", error) from error
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def failure(self, what: str, error: BaseException | None) -> UpstreamError:
        if isinstance(error, OSError) and error.errno is not None:
            reason = errno.errorcode.get(error.errno, str(error.errno)) + f" ({error.strerror})"
        else:
            reason = str(error or "") or type(error).__name__
        return UpstreamError(f"{self._label} {what}: {reason}")

    def timeout(self, idle_timeout_s: float) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"{self._label} sent nothing for {idle_timeout_s:g} s (llama_server.upstream_idle_timeout_s); "
            "the request was cancelled"
        )
