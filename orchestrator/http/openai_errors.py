"""Errors on HTTP: the OpenAI error shape, and which status each orchestrator error gets."""

from __future__ import annotations

import json

from quart import Response

from orchestrator.errors import (
    BackoffError,
    CapacityError,
    ConfigError,
    FlagError,
    OrchestratorError,
    OverloadedError,
    SpawnError,
    UnknownModelError,
    UpstreamError,
    UpstreamTimeoutError,
)


def error_body(message: str, kind: str, code: str) -> bytes:
    """An error in the OpenAI shape: {"error": {"message", "type", "code"}}."""
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def error_response(
    status: int, message: str, kind: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    """An OpenAI-shaped error as a Quart response."""
    body = error_body(message, kind, code)
    return Response(body, status=status, content_type="application/json", headers=headers)


def response_for(error: OrchestratorError) -> Response:
    if isinstance(error, UnknownModelError):
        return error_response(404, str(error), "invalid_request_error", "model_not_found")
    if isinstance(error, OverloadedError):
        retry = {"Retry-After": str(error.retry_after_s)}
        return error_response(429, str(error), "rate_limit_error", "sidecar_overloaded", retry)
    if isinstance(error, CapacityError):
        retry = {"Retry-After": str(error.retry_after_s)}
        return error_response(503, str(error), "server_error", "pool_busy", retry)
    if isinstance(error, BackoffError):
        retry = {"Retry-After": str(error.retry_after_s)}
        return error_response(503, str(error), "server_error", "sidecar_backing_off", retry)
    if isinstance(error, SpawnError):
        return error_response(502, str(error), "server_error", "sidecar_spawn_failed")
    if isinstance(error, UpstreamTimeoutError):
        return error_response(504, str(error), "server_error", "sidecar_timeout")
    if isinstance(error, UpstreamError):
        return error_response(502, str(error), "server_error", "sidecar_failed")
    if isinstance(error, ConfigError):
        body = {"error": {"message": str(error), "type": "invalid_request_error", "code": "invalid_config"},
                "problems": list(error.problems)}  # fmt: skip
        return Response(json.dumps(body), status=400, content_type="application/json")
    if isinstance(error, FlagError):
        return error_response(400, str(error), "invalid_request_error", "invalid_llama_flags")
    return error_response(500, str(error), "server_error", "internal_error")
