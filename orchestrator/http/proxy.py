"""The OpenAI routes: a request leases a sidecar and gets the child's own response, streamed.

The body is forwarded untouched (less our ``llama_flags`` field) and the
child's response comes back chunk by chunk, SSE included. The lease and the
upstream response go on the request's exit stack (see exchange.ExchangeEnd),
so they are released however the exchange ends.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from orchestrator.errors import FlagError, OrchestratorError, UpstreamError
from orchestrator.http.exchange import request_resources
from orchestrator.http.metering import RequestMeter
from orchestrator.http.openai_errors import error_response
from orchestrator.routing import SidecarSpec
from orchestrator.supervisor.pool import Pool
from orchestrator.supervisor.upstream import UpstreamResponse

log = logging.getLogger("orchestrator.http.proxy")

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# Never forwarded: per-connection headers, and CORS headers (llama-server allows
# every origin; a web page must not be able to drive the daemon through us).
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authenticate", "proxy-authorization", "server", "date"}
)  # fmt: skip


async def _relay(upstream: UpstreamResponse, meter: RequestMeter) -> AsyncIterator[bytes]:
    """The child's body, chunk by chunk; an SSE stream that breaks ends with an error event."""
    try:
        async with aclosing(upstream.chunks()) as chunks:  # closed at once when the client leaves
            async for chunk in chunks:
                meter.seen(chunk)
                yield chunk
    except UpstreamError as failure:
        log.warning("%s", failure)
        meter.failed(failure.http.status, failure.http.code)
        if upstream.header("content-type").startswith("text/event-stream"):
            event = {"error": {"message": str(failure), "type": "server_error", "code": failure.http.code}}
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


def register_openai_routes(app: QuartTrio, pool: Pool) -> None:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models.

    The routes are the pool's current ones, read per request: a reload applies at once.
    """

    async def forward() -> Response:
        meter = RequestMeter(request.path)
        leased: list[SidecarSpec] = []  # the spec, once a child is leased (its lease reports then)
        try:
            return await answer(meter, leased)
        except OrchestratorError as error:
            meter.failed(error.http.status, error.http.code)
            if not leased:
                pool.refused(meter.model, meter.figures())
            raise

    def refuse(meter: RequestMeter, message: str, code: str) -> Response:
        meter.failed(400, code)
        pool.refused(None, meter.figures())
        return error_response(400, message, "invalid_request_error", code)

    async def answer(meter: RequestMeter, leased: list[SidecarSpec]) -> Response:
        routes = pool.routes
        idle_timeout = routes.config.llama_server.upstream_idle_timeout_s
        raw = await request.get_data(cache=False)
        assert isinstance(raw, bytes)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            return refuse(meter, f"the request body is not valid JSON: {error}", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return refuse(
                meter,
                "the request body must be a JSON object with a non-empty string field 'model' "
                "(an agent, model or alias name; see GET /v1/models)",
                "missing_model",
            )
        name = body["model"]
        spec = routes.resolve(name, request_flag_tokens(body, request.headers.get(REQUEST_FLAGS_HEADER)))
        meter.asked, meter.model = name, spec.model
        if REQUEST_FLAGS_FIELD in body:  # ours, not llama-server's
            raw = json.dumps(
                {name: value for name, value in body.items() if name != REQUEST_FLAGS_FIELD}
            ).encode()
        resources = request_resources()
        sidecar = await resources.enter_async_context(pool.lease(spec, meter.figures))
        leased.append(spec)
        forwarded = [
            ("content-type", request.headers.get("content-type", "application/json")),
            ("accept", request.headers.get("accept", "*/*")),
            ("accept-encoding", "identity"),
        ]
        # The idle timeout is the longest silence allowed: before the headers and between chunks.
        upstream = await sidecar.upstream.request("POST", request.path, forwarded, raw, idle_timeout)
        resources.callback(upstream.close)
        meter.answered(upstream.status, upstream.header("content-type"))
        headers = Headers(
            (name, value)  # h11 gives names in lower case
            for name, value in upstream.headers
            if name not in _DROPPED_RESPONSE_HEADERS and not name.startswith("access-control-")
        )
        return Response(_relay(upstream, meter), status=upstream.status, headers=headers)

    for path in OPENAI_ROUTES:
        app.add_url_rule(path, endpoint=path, view_func=forward, methods=["POST"])

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
