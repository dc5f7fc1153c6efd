"""The one Quart-Trio app: OpenAI routes, admin API, websocket feeds and the dashboard."""

from __future__ import annotations

import httpx
from quart import Response, has_websocket_context, request, websocket
from quart_trio import QuartTrio

from orchestrator.admin import register_admin_routes
from orchestrator.app_resources import RequestResources
from orchestrator.auth import AccessPolicy, presented_key
from orchestrator.errors import OrchestratorError
from orchestrator.httperrors import error_response, response_for
from orchestrator.pool import Pool
from orchestrator.proxy import register_openai_routes
from orchestrator.routing import RouteTable
from orchestrator.stats import StatsSampler


def create_app(pool: Pool, routes: RouteTable, http: httpx.AsyncClient, stats: StatsSampler) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    # Model responses can take minutes; these limits would cut them silently.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None
    app.asgi_app = RequestResources(app.asgi_app)  # type: ignore[method-assign]

    policy = AccessPolicy(routes.config.server.api_keys, routes.config.server.admin_keys)

    def refusal() -> Response | None:
        connection = websocket if has_websocket_context() else request
        headers = connection.headers
        presented = presented_key(
            headers.get("authorization"), headers.get("x-api-key"), connection.args.get("key")
        )
        if policy.allows(connection.path, presented):
            return None
        return error_response(
            401,
            f"{connection.path} needs a key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
            "invalid_request_error",
            "invalid_api_key",
        )

    @app.before_request
    async def check_request_key() -> Response | None:
        return refusal()

    @app.before_websocket
    async def check_websocket_key() -> Response | None:
        return refusal()

    @app.errorhandler(OrchestratorError)
    async def orchestrator_error(error: OrchestratorError) -> Response:
        return response_for(error)

    @app.errorhandler(404)
    async def not_found(_error: Exception) -> Response:
        message = f"no route {request.method} {request.path}"
        return error_response(404, message, "invalid_request_error", "not_found")

    @app.errorhandler(405)
    async def wrong_method(_error: Exception) -> Response:
        message = f"{request.method} is not allowed on {request.path}"
        return error_response(405, message, "invalid_request_error", "method_not_allowed")

    register_openai_routes(app, pool, routes, http)
    register_admin_routes(app, pool, routes, stats)
    return app
