"""The access gate: every HTTP request and websocket handshake is judged by auth.AccessRules first.

ASGI middleware around the whole app, so no route, feed or static file is
reached without passing it, and the rules live in one place (auth) rather than
in each route. A refused HTTP request gets the OpenAI error shape; a refused
websocket handshake gets the same body as an HTTP response (ASGI's websocket
denial response), so a browser's ``new WebSocket`` fails before any message.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
)

from orchestrator.auth import AccessRules, Exchange, Refusal, presented_key
from orchestrator.config import ServerSettings
from orchestrator.http.openai_errors import ErrorReply, error_reply, has_body, reply_head, send_reply

_WANTED = frozenset({b"host", b"origin", b"authorization", b"x-api-key"})


def exchange_of(scope: HTTPScope | WebsocketScope) -> Exchange:
    """What the rules look at, read from an ASGI scope."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    query = scope["query_string"]
    query_key = parse_qs(query.decode("latin-1")).get("key", [None])[0] if b"key=" in query else None
    server = scope["server"]
    local = (str(server[0]), int(server[1])) if server and server[1] is not None else None
    return Exchange(
        path=scope["path"],
        host=found.get(b"host"),
        origin=found.get(b"origin"),
        key=presented_key(found.get(b"authorization"), found.get(b"x-api-key"), query_key),
        local=local,
    )


class AccessGate:
    """ASGI middleware: lets through only what the current configuration's AccessRules allow."""

    def __init__(self, app: ASGIFramework, server_settings: Callable[[], ServerSettings]) -> None:
        """``server_settings`` gives the settings in force now (they change on reload)."""
        self._app = app
        self._server_settings = server_settings
        self._rules_of: tuple[ServerSettings, AccessRules] | None = None

    def _rules(self) -> AccessRules:
        server = self._server_settings()
        if self._rules_of is None or self._rules_of[0] is not server:
            self._rules_of = (server, AccessRules.of(server))
        return self._rules_of[1]

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, send)
            return
        refusal = self._rules().refusal(exchange_of(scope))
        if refusal is None:
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            await send_reply(send, _refusal_reply(refusal), unread_body=has_body(scope["headers"]))
        else:
            await _refuse_websocket(refusal, receive, send)


def _refusal_reply(refusal: Refusal) -> ErrorReply:
    kind = "invalid_request_error" if refusal.status == 401 else "permission_error"
    return error_reply(refusal.status, refusal.message, kind, refusal.code)


async def _refuse_websocket(refusal: Refusal, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    await receive()  # websocket.connect: the handshake, answered below with an HTTP response
    reply = _refusal_reply(refusal)
    await send(
        {"type": "websocket.http.response.start", "status": reply.status, "headers": reply_head(reply)}
    )
    await send({"type": "websocket.http.response.body", "body": reply.body, "more_body": False})
