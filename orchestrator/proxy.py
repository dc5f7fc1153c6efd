"""The HTTP surface: OpenAI routes, the admin API and the daemon's health, on one Quart-Trio app.

A proxied request leases a sidecar, forwards the body untouched and streams
the child's response back chunk by chunk (SSE included). Everything a request
holds (the lease, the upstream response) goes on an exit stack that a thin
ASGI wrapper closes when the exchange ends, however it ends: quart-trio may
cancel a handler after it returned its response but before the body was
entered, and a lease released only by the body generator would leak then.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, cast

import httpx
import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response, request
from quart_trio import QuartTrio

from orchestrator.errors import (
    CapacityError,
    FlagError,
    OrchestratorError,
    SpawnError,
    UnknownModelError,
    UpstreamError,
)
from orchestrator.pool import Pool
from orchestrator.routing import CHILD_HOST, RouteTable
from orchestrator.sidecar import Sidecar

log = logging.getLogger("orchestrator.proxy")

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_RESOURCES = "orchestrator.resources"
_CLOSE_TIMEOUT_S = 5.0
# Never forwarded: per-connection headers, and CORS headers (llama-server allows
# every origin; a web page must not be able to drive the daemon through us).
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authenticate", "proxy-authorization", "server", "date"}
)  # fmt: skip


def error_response(
    status: int, message: str, kind: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    """An error in the OpenAI shape."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}})
    return Response(body, status=status, content_type="application/json", headers=headers)


def _response_for(error: OrchestratorError) -> Response:
    if isinstance(error, UnknownModelError):
        return error_response(404, str(error), "invalid_request_error", "model_not_found")
    if isinstance(error, CapacityError):
        return error_response(
            503, str(error), "server_error", "pool_busy", {"Retry-After": str(error.retry_after_s)}
        )
    if isinstance(error, SpawnError):
        return error_response(502, str(error), "server_error", "sidecar_spawn_failed")
    if isinstance(error, UpstreamError):
        return error_response(502, str(error), "server_error", "sidecar_failed")
    if isinstance(error, FlagError):
        return error_response(400, str(error), "invalid_request_error", "invalid_llama_flags")
    return error_response(500, str(error), "server_error", "internal_error")


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


def _is_event_stream(upstream: httpx.Response) -> bool:
    return str(upstream.headers.get("content-type", "")).startswith("text/event-stream")


async def _relay(upstream: httpx.Response, sidecar: Sidecar) -> AsyncIterator[bytes]:
    """The child's body, chunk by chunk; an SSE stream that breaks ends with an error event."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as error:
        message = f"{sidecar.label} failed mid-response: {error or type(error).__name__}"
        log.warning("%s", message)
        if _is_event_stream(upstream):
            event = {"error": {"message": message, "type": "server_error", "code": "sidecar_failed"}}
            yield f"data: {json.dumps(event)}\n\n".encode()


REQUEST_FLAGS_FIELD = "llama_flags"
REQUEST_FLAGS_HEADER = "X-Llama-Flags"


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


def create_app(pool: Pool, routes: RouteTable, http: httpx.AsyncClient) -> QuartTrio:
    """The Quart-Trio app; call ``serve_app`` (or hypercorn) on ``app.asgi_app``'s owner."""
    app = QuartTrio(__name__, static_folder=None)
    # Model responses can take minutes; these limits would cut them silently.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None
    app.asgi_app = RequestResources(app.asgi_app)  # type: ignore[method-assign]

    @app.errorhandler(OrchestratorError)
    async def orchestrator_error(error: OrchestratorError) -> Response:
        return _response_for(error)

    @app.errorhandler(404)
    async def not_found(_error: Exception) -> Response:
        return error_response(
            404, f"no route {request.method} {request.path}", "invalid_request_error", "not_found"
        )

    @app.errorhandler(405)
    async def wrong_method(_error: Exception) -> Response:
        return error_response(
            405,
            f"{request.method} is not allowed on {request.path}",
            "invalid_request_error",
            "method_not_allowed",
        )

    async def forward() -> Response:
        raw = await request.get_data(cache=False)
        assert isinstance(raw, bytes)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return error_response(
                400, f"the request body is not valid JSON: {error}", "invalid_request_error", "invalid_json"
            )
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return error_response(
                400,
                "the request body must be a JSON object with a non-empty string field 'model' "
                "(an agent, model or alias name; see GET /v1/models)",
                "invalid_request_error",
                "missing_model",
            )
        spec = routes.resolve(
            body["model"], request_flag_tokens(body, request.headers.get(REQUEST_FLAGS_HEADER))
        )
        if REQUEST_FLAGS_FIELD in body:  # ours, not llama-server's
            raw = json.dumps(
                {name: value for name, value in body.items() if name != REQUEST_FLAGS_FIELD}
            ).encode()
        resources = cast(AsyncExitStack, cast(dict[str, Any], request.scope)[_RESOURCES])
        sidecar = await resources.enter_async_context(pool.lease(spec))
        upstream_request = http.build_request(
            "POST",
            f"http://{CHILD_HOST}:{sidecar.port}{request.path}",
            content=raw,
            headers={
                "content-type": request.headers.get("content-type", "application/json"),
                "accept": request.headers.get("accept", "*/*"),
                "accept-encoding": "identity",
            },
        )
        try:
            upstream = await http.send(upstream_request, stream=True)
        except httpx.HTTPError as error:
            raise UpstreamError(f"{sidecar.label} did not answer: {error or type(error).__name__}") from error
        resources.push_async_callback(upstream.aclose)
        headers = {
            name: value
            for name, value in upstream.headers.items()
            if name.lower() not in _DROPPED_RESPONSE_HEADERS
            and not name.lower().startswith("access-control-")
        }
        return Response(_relay(upstream, sidecar), status=upstream.status_code, headers=headers)

    for path in OPENAI_ROUTES:
        app.add_url_rule(path, endpoint=path, view_func=forward, methods=["POST"])

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
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

    @app.get("/api/sidecars")
    async def list_sidecars() -> dict[str, Any]:
        return {
            "sidecars": pool.describe(),
            "max_sidecars": routes.config.pool.max_sidecars,
            "evictions": pool.evictions,
        }

    @app.delete("/api/sidecars/<key>")
    async def delete_sidecar(key: str) -> Response:
        if not await pool.evict(key):
            return error_response(
                404, f"no sidecar with key {key!r}", "invalid_request_error", "sidecar_not_found"
            )
        return Response(json.dumps({"stopped": key}), content_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "sidecars": len(pool.sidecars())}

    return app
