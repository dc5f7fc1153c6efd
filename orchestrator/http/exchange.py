"""The end of each HTTP exchange: what it holds is released, and its last send is not cut short.

Resources: quart-trio may cancel a handler after it returned its response but
before the body was entered; a lease released only by the body generator
would leak then. So everything a request holds goes on an exit stack in the
ASGI scope, closed once the exchange is over, however it ends.

The last send: an exchange ends with the app's last ``http.response.body``
send. Inside that call hypercorn tells the app the exchange is over
(``http.disconnect``) and then re-arms the connection's idle task, the one
that closes an idle keep-alive connection after ``keep_alive_timeout`` and at
shutdown. quart-trio cancels the request's tasks the moment it sees that
disconnect, which can land while hypercorn is still re-arming: the connection
would be left with no idle task, stay open for as long as the client likes,
and hold up a graceful shutdown for its whole grace period. Shielding that
last send lets hypercorn finish its bookkeeping.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, cast

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)

_RESOURCES = "orchestrator.resources"
_CLOSE_TIMEOUT_S = 5.0
# Bounds the shielded send: the last message carries a small body at most (a bigger one is
# sent before it, unshielded), so only a client that stopped reading could hold it up.
_LAST_SEND_TIMEOUT_S = 5.0
_LAST_SEND_MAX_BYTES = 64 * 1024


class ExchangeEnd:
    """ASGI middleware: an exit stack per HTTP exchange, closed when it ends; the last send shielded."""

    def __init__(self, app: ASGIFramework) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_last_shielded(message: ASGISendEvent) -> None:
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            if len(message.get("body", b"")) > _LAST_SEND_MAX_BYTES:  # a slow client may take long
                await send({"type": "http.response.body", "body": message["body"], "more_body": True})
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            with _shielded_for(_LAST_SEND_TIMEOUT_S):
                await send(message)

        stack = AsyncExitStack()
        cast(dict[str, Any], scope)[_RESOURCES] = stack
        try:
            await self._app(scope, receive, send_last_shielded)
        finally:
            with _shielded_for(_CLOSE_TIMEOUT_S):
                await stack.aclose()


def _shielded_for(seconds: float) -> trio.CancelScope:
    """Shielded from outside cancellation, yet given up after ``seconds`` (one scope, not two)."""
    return trio.CancelScope(shield=True, deadline=trio.current_time() + seconds)


def resources_of(scope: HTTPScope) -> AsyncExitStack:
    """The exit stack of the exchange ``scope`` belongs to."""
    return cast(AsyncExitStack, cast(dict[str, Any], scope)[_RESOURCES])
