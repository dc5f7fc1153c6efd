"""Keep-alive connections stay managed after every exchange (a hypercorn and quart-trio interplay).

An HTTP exchange ends with the app's last ``http.response.body`` send. Inside
that call hypercorn tells the app the exchange is over (``http.disconnect``)
and then re-arms the connection's idle task, the one that closes an idle
keep-alive connection after ``keep_alive_timeout`` and at shutdown.
quart-trio cancels the request's tasks the moment it sees that disconnect,
which can land while hypercorn is still re-arming: the connection is left with
no idle task, stays open for as long as the client likes, and holds up a
graceful shutdown for its whole grace period. Shielding that last send lets
hypercorn finish its bookkeeping.
"""

from __future__ import annotations

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

# Bounds the shielded send: the last message carries no body to speak of (at most a
# chunked terminator), so only a client that stopped reading could hold it up.
_LAST_SEND_TIMEOUT_S = 5.0


class FinishExchanges:
    """ASGI middleware: the last send of each HTTP response is not cancelled half-way."""

    def __init__(self, app: ASGIFramework) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_last_shielded(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True), trio.move_on_after(_LAST_SEND_TIMEOUT_S):
                    await send(message)
            else:
                await send(message)

        await self._app(scope, receive, send_last_shielded)
