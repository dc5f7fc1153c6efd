"""The OpenAI routes: a request leases a sidecar and gets the child's own response, streamed.

POST on the OpenAI routes is the hot path, so it is answered here, in ASGI
middleware of the one Quart-Trio app, below Quart's request and response
objects (which cost more per request than the proxying itself). It sits inside
the same AccessGate (host, origin, keys) and ExchangeEnd (what the exchange
holds is released however it ends; the last send shielded) as every Quart
route, and answers errors with the same replies (openai_errors). Everything
else, ``GET /v1/models`` included, goes on to Quart.

The body is forwarded untouched (less our ``llama_flags`` field) and the
child's response comes back chunk by chunk, SSE included, each chunk sent as
it arrives. A client that leaves cancels the exchange: the upstream response
is closed unfinished, which is how llama-server learns to stop generating.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from quart_trio import QuartTrio

from orchestrator import childerrors
from orchestrator.errors import FlagError, OrchestratorError, UpstreamError
from orchestrator.http.exchange import resources_of
from orchestrator.http.metering import RequestMeter
from orchestrator.http.openai_errors import (
    INTERNAL_ERROR,
    ErrorReply,
    body_too_large,
    error_reply,
    method_not_allowed,
    reply_for,
    send_reply,
)
from orchestrator.supervisor.pool import Pool
from orchestrator.supervisor.upstream import UpstreamResponse

log = logging.getLogger("orchestrator.http.proxy")

OPENAI_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
# Never forwarded: per-connection headers, and CORS headers (llama-server allows
# every origin; a web page must not be able to drive the daemon through us).
_DROPPED_RESPONSE_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-authorization", b"server", b"date"}
)  # fmt: skip
# hypercorn's HTTP/1: once a request is read, nothing more is read from the client until the
# response is over, so its leaving shows only when a send to it fails, and only a body sent in
# pieces has sends that can fail before the end. HTTP/2 reads on: it is listened to throughout.
_HEARD_ONLY_AFTER_A_SEND = frozenset({"1.0", "1.1"})
REQUEST_FLAGS_FIELD = "llama_flags"
REQUEST_FLAGS_HEADER = "X-Llama-Flags"
_FLAGS_HEADER = REQUEST_FLAGS_HEADER.lower().encode()


def request_flag_tokens(body: dict[str, Any], header: str | None) -> list[str]:
    """Per-request llama-server flags from the body field or the (shell-quoted) header."""
    field = body.get(REQUEST_FLAGS_FIELD)
    if field is not None and header is not None:
        raise FlagError(
            [f"give per-request flags in {REQUEST_FLAGS_FIELD!r} or {REQUEST_FLAGS_HEADER}, not both"]
        )
    if field is not None:
        if not isinstance(field, list) or not all(isinstance(token, str) for token in field):
            raise FlagError(
                [f'{REQUEST_FLAGS_FIELD!r} must be a list of strings such as ["--ctx-size", "8192"]']
            )
        return field
    if header is None:
        return []
    try:
        return shlex.split(header)
    except ValueError as error:
        raise FlagError([f"{REQUEST_FLAGS_HEADER} is not valid shell quoting: {error}"]) from error


class _ClientLeft(Exception):
    """The client disconnected before its request body was whole."""


class _Refused(Exception):
    """The request is answered with an error of ours, before any child is asked."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _bad_request(message: str, code: str) -> _Refused:
    return _Refused(error_reply(400, message, "invalid_request_error", code))


class OpenAIProxy:
    """ASGI middleware: answers POST on the OpenAI routes from the pool; passes the rest on."""

    def __init__(self, app: ASGIFramework, pool: Pool, max_body_bytes: int) -> None:
        self._app = app
        self._pool = pool
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http" or scope["path"] not in OPENAI_ROUTES:
            await self._app(scope, receive, send)
        elif scope["method"] != "POST":
            await send_reply(send, method_not_allowed(scope["method"], scope["path"]))
        else:
            await self._exchange(scope, receive, send)

    async def _exchange(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        meter = RequestMeter(scope["path"])
        try:
            raw = await self._body(scope, receive)
        except _ClientLeft:
            return
        except _Refused as refused:
            await self._refuse(send, meter, refused.reply)
            return
        if scope["http_version"] in _HEARD_ONLY_AFTER_A_SEND:
            await self._answer(scope, raw, meter, send, listen=receive)
        else:
            async with _cancelled_if_the_client_leaves(receive):
                await self._answer(scope, raw, meter, send, listen=None)

    async def _body(self, scope: HTTPScope, receive: ASGIReceiveCallable) -> bytes:
        limit = self._max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _Refused(body_too_large(limit))
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            assert message["type"] == "http.request"
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise _Refused(body_too_large(limit))
            parts.append(part)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _refuse(self, send: ASGISendCallable, meter: RequestMeter, reply: ErrorReply) -> None:
        meter.failed(reply.status, reply.code)
        self._pool.refused(meter.model, meter.figures())
        await send_reply(send, reply)

    async def _answer(
        self,
        scope: HTTPScope,
        raw: bytes,
        meter: RequestMeter,
        send: ASGISendCallable,
        listen: ASGIReceiveCallable | None,
    ) -> None:
        """``listen``: where to hear the client leave once the body turns out to come in pieces
        (None: heard already)."""
        leased = False  # once a child is leased, its lease reports how the request went
        started = False  # once the response head is sent, errors can only end the body
        try:
            routes = self._pool.routes
            body = _parsed(raw)
            headers = dict(scope["headers"])
            flags_header = headers.get(_FLAGS_HEADER)
            name = body["model"]
            spec = routes.resolve(
                name,
                request_flag_tokens(body, None if flags_header is None else flags_header.decode("latin-1")),
            )
            meter.asked, meter.model = name, spec.model
            if REQUEST_FLAGS_FIELD in body:  # ours, not llama-server's
                raw = json.dumps(
                    {key: value for key, value in body.items() if key != REQUEST_FLAGS_FIELD}
                ).encode()
            resources = resources_of(scope)
            sidecar = await resources.enter_async_context(self._pool.lease(spec, meter.figures))
            leased = True
            forwarded = [
                (b"content-type", headers.get(b"content-type", b"application/json")),
                (b"accept", headers.get(b"accept", b"*/*")),
                (b"accept-encoding", b"identity"),
            ]
            # The idle timeout is the longest silence allowed: before the headers and between chunks.
            idle_timeout = routes.config.llama_server.upstream_idle_timeout_s
            upstream = await sidecar.upstream.request("POST", scope["path"], forwarded, raw, idle_timeout)
            resources.callback(upstream.close)
            meter.answered(upstream.status, upstream.header("content-type"))
            head = [
                (name, value)
                for name, value in upstream.headers
                if name not in _DROPPED_RESPONSE_HEADERS and not name.startswith(b"access-control-")
            ]
            if _may_explain(upstream):
                started = True
                await _send_explained(upstream, head, meter, send, partial(routes.where_to_enable, name))
                return
            await send(
                {"type": "http.response.start", "status": upstream.status, "headers": head, "trailers": False}
            )
            started = True
            await _relay(upstream, meter, send, listen)
        except _Refused as refused:
            await self._refuse(send, meter, refused.reply)
        except OrchestratorError as error:
            meter.failed(error.http.status, error.http.code)
            if not leased:
                self._pool.refused(meter.model, meter.figures())
            if not started:
                await send_reply(send, reply_for(error))
        except Exception as error:  # a bug, not bad input: log it whole, answer if we still can, keep serving
            log.error("unexpected error on POST %s", scope["path"], exc_info=error)
            if not started:
                await send_reply(send, INTERNAL_ERROR)


def _parsed(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object with a model name, or the 400 that says what is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _bad_request(f"the request body is not valid JSON: {error}", "invalid_json") from error
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad_request(
            "the request body must be a JSON object with a non-empty string field 'model' "
            "(an agent, model or alias name; see GET /v1/models)",
            "missing_model",
        )
    return body


def _may_explain(upstream: UpstreamResponse) -> bool:
    """An error a child may have answered for a capability it was not started with (small JSON)."""
    if upstream.status not in childerrors.STATUSES or "json" not in upstream.header("content-type"):
        return False
    length = upstream.header("content-length")
    return length.isdigit() and int(length) <= childerrors.MAX_BYTES


async def _send_explained(
    upstream: UpstreamResponse,
    head: list[tuple[bytes, bytes]],
    meter: RequestMeter,
    send: ASGISendCallable,
    where_to_enable: childerrors.WhereToEnable,
) -> None:
    """The child's error, read whole, with how to enable what it lacks here (see childerrors)."""
    body = await upstream.read()
    explained = childerrors.explain(upstream.status, body, where_to_enable)
    if explained is not None:
        body = explained
        head = [(n, v) for n, v in head if n != b"content-length"] + [(b"content-length", b"%d" % len(body))]
    meter.seen(body)
    await send({"type": "http.response.start", "status": upstream.status, "headers": head, "trailers": False})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _relay(
    upstream: UpstreamResponse,
    meter: RequestMeter,
    send: ASGISendCallable,
    listen: ASGIReceiveCallable | None,
) -> None:
    """The child's body to the client, piece by piece.

    With ``listen``, the client's leaving is listened for once more than one piece comes.
    """
    async with aclosing(upstream.chunks()) as chunks:
        ended = await _relay_pieces(chunks, upstream, meter, send, first_only=listen is not None)
        if listen is not None and not ended and not upstream.complete:
            async with _cancelled_if_the_client_leaves(listen):
                ended = await _relay_pieces(chunks, upstream, meter, send, first_only=False)
    if not ended:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_pieces(
    chunks: AsyncIterator[bytes],
    upstream: UpstreamResponse,
    meter: RequestMeter,
    send: ASGISendCallable,
    *,
    first_only: bool,
) -> bool:
    """Pieces of the body to the client (only the first, if ``first_only``); True once it is ended.

    A body that breaks off ends there; an SSE stream, with an error event.
    """
    try:
        async for chunk in chunks:
            meter.seen(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": not upstream.complete})
            if upstream.complete:  # the last piece ends the response itself: one send fewer
                return True
            if first_only:
                break
    except UpstreamError as failure:
        log.warning("%s", failure)
        meter.failed(failure.http.status, failure.http.code)
        ending = b""
        if upstream.header("content-type").startswith("text/event-stream"):
            event = {"error": {"message": str(failure), "type": "server_error", "code": failure.http.code}}
            ending = f"data: {json.dumps(event)}\n\n".encode()
        await send({"type": "http.response.body", "body": ending, "more_body": False})
        return True
    return False


@asynccontextmanager
async def _cancelled_if_the_client_leaves(receive: ASGIReceiveCallable) -> AsyncIterator[None]:
    """The block is cancelled if the client disconnects meanwhile (which is heard on receive() only)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_the_client_leaves, receive, nursery.cancel_scope)
        yield
        nursery.cancel_scope.cancel()


async def _cancel_when_the_client_leaves(receive: ASGIReceiveCallable, exchange: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # nothing else comes once the body is read
    exchange.cancel()


def register_openai_routes(app: QuartTrio, pool: Pool) -> None:
    """GET /v1/models, in Quart (POST on the OpenAI routes is OpenAIProxy's).

    The routes are the pool's current ones, read per request: a reload applies at once.
    """

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        routes = pool.routes
        return {
            "object": "list",
            "data": [
                {
                    "id": route.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "llama-sidecar",
                    "kind": route.kind,
                    "model": route.model.name,
                    "sidecar_key": routes.key_of(route.name),
                    "allow_request_flags": route.allow_request_flags,
                }
                for route in routes.routes()
            ],
        }
