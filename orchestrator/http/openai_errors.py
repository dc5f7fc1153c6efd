"""Errors on HTTP: the OpenAI error shape, with the status and code each error class declares."""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from orchestrator.errors import ConfigError, OrchestratorError


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
    """The response for ``error``, from the HTTP meaning its class declares (see errors)."""
    meaning = error.http
    headers = None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    document: dict[str, Any] = {"error": {"message": str(error), "type": meaning.type, "code": meaning.code}}
    if isinstance(error, ConfigError):
        document["problems"] = list(error.problems)
    return Response(
        json.dumps(document), status=meaning.status, content_type="application/json", headers=headers
    )
