"""Per-request resources released when the HTTP exchange ends, however it ends.

quart-trio may cancel a handler after it returned its response but before the
body was entered; a lease released only by the body generator would leak
then. So everything a request holds goes on an exit stack in the ASGI scope,
and a thin ASGI wrapper closes it once the exchange is over.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, cast

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import request

_RESOURCES = "orchestrator.resources"
_CLOSE_TIMEOUT_S = 5.0


class RequestResources:
    """ASGI middleware: an exit stack per HTTP exchange, closed when it ends."""

    def __init__(self, app: ASGIFramework) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        stack = AsyncExitStack()
        cast(dict[str, Any], scope)[_RESOURCES] = stack
        try:
            await self._app(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                await stack.aclose()


def request_resources() -> AsyncExitStack:
    """The current request's exit stack."""
    return cast(AsyncExitStack, cast(dict[str, Any], request.scope)[_RESOURCES])
