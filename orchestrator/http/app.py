"""The one Quart-Trio app: OpenAI routes, admin API, websocket feeds and the dashboard."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, has_request_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from orchestrator.errors import OrchestratorError
from orchestrator.http.admin import Reloader, register_admin_routes
from orchestrator.http.exchange import ExchangeEnd
from orchestrator.http.gate import AccessGate
from orchestrator.http.models import register_model_routes
from orchestrator.http.ollama import OllamaApi
from orchestrator.http.openai_errors import (
    INTERNAL_ERROR,
    as_response,
    body_too_large,
    error_response,
    method_not_allowed,
    response_for,
)
from orchestrator.http.proxy import ApiProxy
from orchestrator.supervisor.history import History
from orchestrator.supervisor.metrics import PoolMetrics
from orchestrator.supervisor.pool import Pool
from orchestrator.supervisor.stats import StatsSampler

log = logging.getLogger("orchestrator.http.app")


def _with_ollama(proxy: ApiProxy, pool: Pool, max_body_bytes: int) -> OllamaApi:
    """Ollama's routes in front: what they do not answer goes on to the proxy, and so does what they
    translate (into the same proxy, as the llama-server request it becomes)."""
    return OllamaApi(proxy, proxy, pool, max_body_bytes)


def create_app(
    pool: Pool, stats: StatsSampler, history: History, metrics: PoolMetrics, reload: Reloader,
    *, agent_port: int | None = None,
) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    # Model responses can take minutes; these limits would cut them silently.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None
    max_body_bytes = pool.routes.config.server.max_body_bytes  # fixed until restart
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    # Outermost: nothing is reached before the host, origin and key rules are passed. Then the
    # exchange's resources, then llama-server's routes' fast path (proxy), then Quart for the rest.
    app.asgi_app = AccessGate(  # type: ignore[method-assign]
        ExchangeEnd(_with_ollama(ApiProxy(app.asgi_app, pool, max_body_bytes), pool, max_body_bytes)),
        lambda: pool.routes.config.server,  # the keys may change on reload
    )

    @app.errorhandler(OrchestratorError)
    async def orchestrator_error(error: OrchestratorError) -> Response:
        return response_for(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 400
        if status == 404:
            message, code = f"no route {request.method} {request.path}", "not_found"
        elif status == 405:
            return as_response(method_not_allowed(request.method, request.path))
        elif status == 413:
            return as_response(body_too_large(max_body_bytes))
        else:
            message, code = (
                f"{error.name}: {error.description}",
                (error.name or "error").lower().replace(" ", "_"),
            )
        return error_response(status, message, "invalid_request_error", code)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        # A bug, not bad input: log it whole, answer in the OpenAI shape, keep serving.
        where = f"{request.method} {request.path}" if has_request_context() else f"websocket {websocket.path}"
        log.error("unexpected error on %s", where, exc_info=error)
        return as_response(INTERNAL_ERROR)

    register_model_routes(app, pool)
    register_admin_routes(app, pool, stats, history, reload, agent_port=agent_port)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(await metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    return app
