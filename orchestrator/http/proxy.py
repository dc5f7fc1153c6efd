"""llama-server's routes through the pool: a request leases a child and gets its own answer, streamed.

Every route the children serve (``apiroutes.ROUTES``: OpenAI, Anthropic,
llama.cpp's own), and ``/upstream/{name}/{path}`` for anything else, take one
way through here: the model named in the body, a form field or the query
(else the default one), the flag rules and per-request flags, the lease, the
error shape, the metering, the end-of-exchange cleanup. It is the hot path, so
it is ASGI middleware of the one Quart-Trio app, below Quart's request and
response objects (which cost more per request than the proxying itself),
inside the same AccessGate (host, origin, keys) and ExchangeEnd (what the
exchange holds is released however it ends; the last send shielded).
Everything else goes on to Quart.

The body is forwarded untouched (less our ``llama_flags`` field); a multipart
body is streamed to the child once its ``model`` field has been read. The
child's answer comes back chunk by chunk, SSE included, each chunk sent as it
arrives; only a small JSON answer that needs our words (a capability the child
lacks, a server path in ``/props``) is read whole. A client that leaves
cancels the exchange: the upstream response is closed unfinished, which is how
llama-server learns to stop generating.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from orchestrator import apiroutes, childerrors, multipart
from orchestrator.apiroutes import ApiRoute, ModelIn
from orchestrator.errors import FlagError, OrchestratorError, SlotActionError, UpstreamError
from orchestrator.http.exchange import resources_of
from orchestrator.http.metering import RequestMeter
from orchestrator.http.openai_errors import (
    INTERNAL_ERROR,
    ErrorReply,
    body_too_large,
    error_body,
    error_reply,
    has_body,
    method_not_allowed,
    reply_for,
    send_reply,
)
from orchestrator.routing import SidecarSpec
from orchestrator.supervisor.pool import Pool, SidecarLike
from orchestrator.supervisor.upstream import UpstreamResponse

log = logging.getLogger("orchestrator.http.proxy")

UPSTREAM_LABEL = "/upstream"  # every /upstream/{name}/... request, for the metrics (labels stay bounded)
# A scope extension naming the route a translated request came in on (Ollama's): {"path": "/api/chat"}.
ROUTE_LABEL = "llama_sidecar.route"
LOADING_TICK_S = 1.0  # a streamed chat waiting for a load is told how long so far, this often
REWRITE_MAX_BYTES = 1 << 20  # a JSON answer read whole to put our words in (errors, /props)
# Never forwarded: per-connection headers, and CORS headers (llama-server allows
# every origin; a web page must not be able to drive the daemon through us).
_DROPPED_RESPONSE_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-authorization", b"server", b"date"}
)  # fmt: skip
# Not passed on to a child by /upstream: per-connection framing, and our own credentials.
_DROPPED_REQUEST_HEADERS = frozenset(
    {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"content-length", b"proxy-authorization", b"authorization", b"x-api-key", b"cookie"}
)  # fmt: skip
# hypercorn's HTTP/1: once a request is read, nothing more is read from the client until the
# response is over, so its leaving shows only when a send to it fails, and only a body sent in
# pieces has sends that can fail before the end. HTTP/2 reads on: it is listened to throughout.
_HEARD_ONLY_AFTER_A_SEND = frozenset({"1.0", "1.1"})
_SSE_HEAD = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
REQUEST_FLAGS_FIELD = "llama_flags"
REQUEST_FLAGS_HEADER = "X-Llama-Flags"
_FLAGS_HEADER = REQUEST_FLAGS_HEADER.lower().encode()
_MODEL_FIELD = "model"


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


@dataclass
class _Incoming:
    """A request as the child will get it, and what routes it."""

    target: str  # the child's path and query
    name: str | None  # the model it names (None: the default one)
    flag_tokens: list[str]
    head: list[tuple[bytes, bytes]]  # the headers the child gets
    body: bytes = b""  # the whole body, or (streamed) what was read of it
    rest: AsyncGenerator[bytes] | None = None  # the rest of a streamed body (closed with the exchange)
    length: int | None = None  # a streamed body's length, when the client said it
    streamed_answer: bool = False  # asked for an SSE stream ("stream": true)


def _slot_action_refused() -> SlotActionError:
    return SlotActionError(
        "slot actions (save, restore, erase) are the supervisor's: it decides where slot files go "
        "(the KV cache kept across swaps); GET /slots?model=NAME shows a child's slots"
    )


class ApiProxy:
    """ASGI middleware: answers llama-server's routes from the pool; passes the rest on."""

    def __init__(self, app: ASGIFramework, pool: Pool, max_body_bytes: int) -> None:
        self._app = app
        self._pool = pool
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        route = apiroutes.find(method, path, b"model=" in scope["query_string"])
        unread = has_body(scope["headers"])
        if route is not None or path.startswith(apiroutes.UPSTREAM_PREFIX):
            await self._exchange(scope, receive, send, route)
        elif apiroutes.is_slot_action(method, path):
            await send_reply(send, reply_for(_slot_action_refused()), unread_body=unread)
        elif path in apiroutes.PATHS and path not in apiroutes.OWN_WITHOUT_MODEL:
            await send_reply(send, method_not_allowed(method, path), unread_body=unread)
        else:
            await self._app(scope, receive, send)

    async def _exchange(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable, route: ApiRoute | None
    ) -> None:
        came_in = (scope.get("extensions") or {}).get(ROUTE_LABEL)
        meter = RequestMeter(came_in["path"] if came_in else UPSTREAM_LABEL if route is None else route.path)
        try:
            incoming = await self._incoming(scope, receive, route)
        except _ClientLeft:
            return
        except _Refused as refused:  # maybe before the body was read whole
            await self._refuse(send, meter, refused.reply, unread_body=has_body(scope["headers"]))
            return
        except FlagError as error:  # per-request flags that are not even a list of strings
            await self._refuse(send, meter, reply_for(error))
            return
        if incoming.rest is not None:
            resources_of(scope).push_async_callback(incoming.rest.aclose)
        # A streamed request body is read from receive() until it is sent: hear the client leave
        # only after that, as on HTTP/1.
        if scope["http_version"] in _HEARD_ONLY_AFTER_A_SEND or incoming.rest is not None:
            await self._answer(scope, incoming, route, meter, send, listen=receive)
        else:
            async with _cancelled_if_the_client_leaves(receive):
                await self._answer(scope, incoming, route, meter, send, listen=None)

    # -- the request ---------------------------------------------------------------

    async def _incoming(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, route: ApiRoute | None
    ) -> _Incoming:
        headers = dict(scope["headers"])
        declared = _content_length(headers)
        if declared is not None and declared > self._max_body_bytes:
            raise _Refused(body_too_large(self._max_body_bytes))
        flags_header = headers.get(_FLAGS_HEADER)
        header_tokens = None if flags_header is None else flags_header.decode("latin-1")
        query = scope["query_string"].decode("latin-1")
        if route is None:
            return await self._raw(scope, receive, headers, query)
        target = route.path + (f"?{query}" if query else "")
        head = [
            (b"content-type", headers.get(b"content-type", b"application/json")),
            (b"accept", headers.get(b"accept", b"*/*")),
            (b"accept-encoding", b"identity"),
        ]
        if route.model_in is ModelIn.QUERY:
            named = parse_qs(query).get(_MODEL_FIELD, [""])[0] or None
            return _Incoming(target, named, request_flag_tokens({}, header_tokens), head)
        if route.model_in is ModelIn.FORM:
            return await self._form(
                scope=scope,
                receive=receive,
                headers=headers,
                target=target,
                head=head,
                header_tokens=header_tokens,
            )
        raw = await self._body(scope, receive)
        body = _parsed(raw)
        tokens = request_flag_tokens(body, header_tokens)
        if REQUEST_FLAGS_FIELD in body:  # ours, not llama-server's
            raw = json.dumps(
                {key: value for key, value in body.items() if key != REQUEST_FLAGS_FIELD}
            ).encode()
        return _Incoming(
            target, _model_named(body), tokens, head, raw, streamed_answer=body.get("stream") is True
        )

    async def _form(
        self,
        *,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        headers: dict[bytes, bytes],
        target: str,
        head: list[tuple[bytes, bytes]],
        header_tokens: str | None,
    ) -> _Incoming:
        """A multipart body: read until its model field, then streamed on with what was read."""
        try:
            finder = multipart.FieldFinder(
                multipart.boundary_of(headers.get(b"content-type", b"").decode("latin-1")), _MODEL_FIELD
            )
        except multipart.MultipartError as error:
            raise _bad_request(str(error), "invalid_multipart") from error
        pieces = self._body_pieces(receive)
        read: list[bytes] = []
        try:
            async for piece in pieces:
                read.append(piece)
                finder.feed(piece)
                if finder.value is not None or finder.ended:
                    break
        except multipart.MultipartError as error:
            await pieces.aclose()
            raise _bad_request(str(error), "invalid_multipart") from error
        tokens = request_flag_tokens({}, header_tokens)
        return _Incoming(
            target, finder.value or None, tokens, head, b"".join(read), pieces, _content_length(headers)
        )

    async def _raw(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, headers: dict[bytes, bytes], query: str
    ) -> _Incoming:
        """/upstream/{name}/{path}: the request as it came, for that name's child."""
        found = apiroutes.upstream_target(scope["path"], query)
        if found is None:
            raise _Refused(error_reply(
                404, f"{scope['path']!r} is not a path of a child: /upstream/NAME/PATH, with no '.' or "
                "'..' segment", "invalid_request_error", "not_found",
            ))  # fmt: skip
        name, child_target = found
        if apiroutes.is_slot_action(scope["method"], child_target.partition("?")[0]):
            raise _Refused(reply_for(_slot_action_refused()))
        raw_rest = scope["raw_path"].split(b"/", 3)[3] if scope["raw_path"].count(b"/") >= 3 else b""
        target = "/" + raw_rest.decode("ascii", "replace") + (f"?{query}" if query else "")
        head = [(n, v) for n, v in scope["headers"] if n not in _DROPPED_REQUEST_HEADERS]
        length = _content_length(headers)
        chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        if not length and not chunked:
            return _Incoming(target, name, [], head)
        return _Incoming(target, name, [], head, b"", self._body_pieces(receive), length)

    async def _body(self, scope: HTTPScope, receive: ASGIReceiveCallable) -> bytes:
        parts = [piece async for piece in self._body_pieces(receive)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _body_pieces(self, receive: ASGIReceiveCallable) -> AsyncGenerator[bytes]:
        """The request body as it comes, no more than ``max_body_bytes`` of it (else 413)."""
        limit = self._max_body_bytes  # a declared length over it is refused before (see _incoming)
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
            if part:
                yield part
            if not message.get("more_body", False):
                return

    # -- the answer ----------------------------------------------------------------

    async def _refuse(
        self, send: ASGISendCallable, meter: RequestMeter, reply: ErrorReply, *, unread_body: bool = False
    ) -> None:
        meter.failed(reply.status, reply.code)
        self._pool.refused(meter.model, meter.figures())
        await send_reply(send, reply, unread_body=unread_body)

    async def _answer(
        self,
        scope: HTTPScope,
        incoming: _Incoming,
        route: ApiRoute | None,
        meter: RequestMeter,
        send: ASGISendCallable,
        *,
        listen: ASGIReceiveCallable | None,
    ) -> None:
        """``listen``: where to hear the client leave once the answer turns out to come in pieces
        (None: heard already)."""
        leased = False  # once a child is leased, its lease reports how the request went
        started = False  # once the response head is sent, errors can only end the body
        try:
            routes = self._pool.routes
            spec = routes.resolve(incoming.name, incoming.flag_tokens)
            asked = incoming.name or routes.default() or spec.model
            meter.asked, meter.model = asked, spec.model
            resources = resources_of(scope)
            show_loading = (
                route is not None
                and route.shows_loading
                and incoming.streamed_answer
                and routes.route(asked).send_loading_state
                and not self._pool.is_ready(spec.key)
            )
            if show_loading:
                started = True
                sidecar = await self._lease_showing_the_load(send, resources, spec, asked, meter)
            else:
                sidecar = await resources.enter_async_context(self._pool.lease(spec, meter.figures))
            leased = True
            upstream = await self._ask(
                sidecar, scope["method"], incoming, routes.config.llama_server.upstream_idle_timeout_s
            )
            resources.callback(upstream.close)
            if show_loading:
                await self._relay_after_loading(upstream, meter, send, listen)
                return
            meter.answered(upstream.status, upstream.header("content-type"))
            head = [
                (name, value)
                for name, value in upstream.headers
                if name not in _DROPPED_RESPONSE_HEADERS and not name.startswith(b"access-control-")
            ]
            rewrite = _rewriter(upstream, route, partial(routes.where_to_enable, asked), asked)
            started = True
            if rewrite is not None:
                await _send_rewritten(upstream, head, meter, send, rewrite)
                return
            await send(
                {"type": "http.response.start", "status": upstream.status, "headers": head, "trailers": False}
            )
            await _relay(upstream, meter, send, listen)
        except _Refused as refused:
            if started:
                await _end_stream_with_error(send, refused.reply.body)
                meter.failed(refused.reply.status, refused.reply.code)
            else:
                await self._refuse(send, meter, refused.reply, unread_body=incoming.rest is not None)
        except OrchestratorError as error:
            meter.failed(error.http.status, error.http.code)
            if not leased:
                self._pool.refused(meter.model, meter.figures())
            if not started:
                await send_reply(send, reply_for(error), unread_body=incoming.rest is not None)
            else:
                await _end_stream_with_error(send, reply_for(error).body)
        except Exception as error:  # a bug, not bad input: log it whole, answer if we still can, keep serving
            log.error("unexpected error on %s %s", scope["method"], scope["path"], exc_info=error)
            if not started:
                await send_reply(send, INTERNAL_ERROR, unread_body=incoming.rest is not None)

    async def _ask(
        self, sidecar: SidecarLike, method: str, incoming: _Incoming, idle_timeout_s: float
    ) -> UpstreamResponse:
        """The request to the child; the idle timeout is the longest silence, before the head and
        between chunks."""
        if incoming.rest is None:
            return await sidecar.upstream.request(
                method, incoming.target, incoming.head, incoming.body, idle_timeout_s
            )
        return await sidecar.upstream.request_streaming(
            method,
            target=incoming.target,
            headers=incoming.head,
            first=incoming.body,
            rest=incoming.rest,
            length=incoming.length,
            idle_timeout_s=idle_timeout_s,
        )

    async def _lease_showing_the_load(
        self,
        send: ASGISendCallable,
        resources: AsyncExitStack,
        spec: SidecarSpec,
        asked: str,
        meter: RequestMeter,
    ) -> SidecarLike:
        """The stream starts at once and shows the child loading (reasoning deltas) until it is ready."""
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEAD, "trailers": False})
        meter.answered(200, "text/event-stream")
        loading = LoadingShown(asked, spec.model)
        await _send_piece(send, meter, loading.started())
        failure: OrchestratorError | None = None
        async with trio.open_nursery() as ticking:
            ticking.start_soon(_tick, send, meter, loading)
            try:
                sidecar = await resources.enter_async_context(self._pool.lease(spec, meter.figures))
            except OrchestratorError as error:
                failure = error
            ticking.cancel_scope.cancel()
        if failure is not None:
            raise failure
        await _send_piece(send, meter, loading.ready())
        return sidecar

    async def _relay_after_loading(
        self,
        upstream: UpstreamResponse,
        meter: RequestMeter,
        send: ASGISendCallable,
        listen: ASGIReceiveCallable | None,
    ) -> None:
        """The child's stream after the loading pieces (its head is ours already); an error as an event."""
        if upstream.status == 200:
            await _relay(upstream, meter, send, listen)
            return
        body = await upstream.read()
        meter.failed(upstream.status, "sidecar_error")
        await _end_stream_with_error(send, body)


class LoadingShown:
    """The loading pieces of a chat stream: OpenAI chunks whose deltas are ``reasoning_content``."""

    def __init__(self, asked: str, model: str, now: Callable[[], float] = time.monotonic) -> None:
        self._asked, self._model, self._now = asked, model, now
        self._since = now()

    def started(self) -> bytes:
        what = self._asked if self._asked == self._model else f"{self._asked} ({self._model})"
        return self._chunk(f"Loading {what}…", role=True)

    def tick(self) -> bytes:
        return self._chunk(f" {self._now() - self._since:.0f} s…")

    def ready(self) -> bytes:
        return self._chunk(f" ready after {self._now() - self._since:.1f} s.\n\n")

    def _chunk(self, text: str, *, role: bool = False) -> bytes:
        delta: dict[str, str] = {"role": "assistant"} if role else {}
        delta["reasoning_content"] = text
        chunk = {
            "id": "chatcmpl-loading", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": self._asked, "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n".encode()


async def _tick(send: ASGISendCallable, meter: RequestMeter, loading: LoadingShown) -> None:
    while True:
        await trio.sleep(LOADING_TICK_S)
        with trio.CancelScope(shield=True):  # cancelled while asleep, never in the middle of a send
            await _send_piece(send, meter, loading.tick())


async def _send_piece(send: ASGISendCallable, meter: RequestMeter, piece: bytes) -> None:
    meter.seen(piece)
    await send({"type": "http.response.body", "body": piece, "more_body": True})


async def _end_stream_with_error(send: ASGISendCallable, error_json: bytes) -> None:
    """End a response whose head is sent: as an SSE error event (the only thing a stream can still say)."""
    await send({"type": "http.response.body", "body": b"data: " + error_json + b"\n\n", "more_body": False})


def _parsed(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is an empty one), or the 400 that says why not."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _bad_request(f"the request body is not valid JSON: {error}", "invalid_json") from error
    if not isinstance(body, dict):
        raise _bad_request(
            f"the request body must be a JSON object, got {type(body).__name__}", "invalid_json"
        )
    return body


def _model_named(body: dict[str, Any]) -> str | None:
    """The body's model name; None when it names none ("model" absent, null or empty)."""
    named = body.get(_MODEL_FIELD)
    if named is None or named == "":
        return None
    if not isinstance(named, str):
        raise _bad_request(
            f"the body's 'model' must be a string (an agent, model or alias name; see GET /v1/models), "
            f"got {type(named).__name__}",
            "missing_model",
        )
    return named


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    return int(value) if value is not None and value.isdigit() else None


Rewrite = Callable[[bytes], bytes | None]


def _rewriter(
    upstream: UpstreamResponse,
    route: ApiRoute | None,
    where_to_enable: childerrors.WhereToEnable,
    asked: str,
) -> Rewrite | None:
    """What to change in a small JSON answer before it goes out, or None to relay it as it is."""
    if route is None or "json" not in upstream.header("content-type"):
        return None  # /upstream answers go as they are
    length = upstream.header("content-length")
    if not (length.isdigit() and int(length) <= REWRITE_MAX_BYTES):
        return None
    if upstream.status in childerrors.STATUSES:
        return partial(childerrors.explain, upstream.status, where_to_enable=where_to_enable)
    if route.hides_paths and upstream.status == 200:
        return partial(apiroutes.hide_model_path, public_name=asked)
    return None


async def _send_rewritten(
    upstream: UpstreamResponse,
    head: list[tuple[bytes, bytes]],
    meter: RequestMeter,
    send: ASGISendCallable,
    rewrite: Rewrite,
) -> None:
    """The child's answer, read whole, with our words in it (or as it was, when there are none)."""
    body = await upstream.read()
    rewritten = rewrite(body)
    if rewritten is not None:
        body = rewritten
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
        if upstream.header("content-type").startswith("text/event-stream"):
            await _end_stream_with_error(send, error_body(str(failure), "server_error", failure.http.code))
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
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
