"""Errors on HTTP: the OpenAI error shape, with the status and code each error class declares.

An error is first an ``ErrorReply`` (status, headers, body), so the Quart
routes, the OpenAI fast path and the access gate answer with the same bytes:
Quart wraps it in a Response, the ASGI layers send it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hypercorn.typing import ASGISendCallable
from quart import Response

from orchestrator.errors import ConfigError, OrchestratorError


@dataclass(frozen=True)
class ErrorReply:
    status: int
    code: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # besides content-type and content-length


def error_body(message: str, kind: str, code: str) -> bytes:
    """An error in the OpenAI shape: {"error": {"message", "type", "code"}}."""
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def error_reply(status: int, message: str, kind: str, code: str) -> ErrorReply:
    return ErrorReply(status, code, error_body(message, kind, code))


def reply_for(error: OrchestratorError) -> ErrorReply:
    """The reply for ``error``, from the HTTP meaning its class declares (see errors)."""
    meaning = error.http
    headers = () if error.retry_after_s is None else (("retry-after", str(error.retry_after_s)),)
    document: dict[str, Any] = {"error": {"message": str(error), "type": meaning.type, "code": meaning.code}}
    if isinstance(error, ConfigError):
        document["problems"] = list(error.problems)
    return ErrorReply(meaning.status, meaning.code, json.dumps(document).encode(), headers)


def method_not_allowed(method: str, path: str) -> ErrorReply:
    return error_reply(
        405, f"{method} is not allowed on {path}", "invalid_request_error", "method_not_allowed"
    )


def body_too_large(limit: int) -> ErrorReply:
    return error_reply(
        413,
        f"the request body is larger than {limit} bytes (server.max_body_bytes)",
        "invalid_request_error",
        "body_too_large",
    )


INTERNAL_ERROR = error_reply(500, "internal error (logged by the daemon)", "server_error", "internal_error")


def as_response(reply: ErrorReply) -> Response:
    """The reply as a Quart response."""
    return Response(
        reply.body, status=reply.status, content_type="application/json", headers=dict(reply.headers)
    )


def error_response(status: int, message: str, kind: str, code: str) -> Response:
    """An OpenAI-shaped error as a Quart response."""
    return as_response(error_reply(status, message, kind, code))


def response_for(error: OrchestratorError) -> Response:
    return as_response(reply_for(error))


def reply_head(reply: ErrorReply) -> list[tuple[bytes, bytes]]:
    """The reply's ASGI headers."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(reply.body)).encode()),
        *((name.encode(), value.encode()) for name, value in reply.headers),
    ]


def has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers announce a body."""
    return any(
        (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding"
        for name, value in headers
    )


async def send_reply(send: ASGISendCallable, reply: ErrorReply, *, unread_body: bool = False) -> None:
    """Answer an HTTP exchange with ``reply`` (nothing of the response sent yet).

    ``unread_body``: the request's body was not read to its end (refused before that). The
    connection then cannot carry another request (the client may still be sending this one), so
    the reply says it closes: a client that reused it would see it cut without an answer.
    """
    head = reply_head(reply) + ([(b"connection", b"close")] if unread_body else [])
    await send({"type": "http.response.start", "status": reply.status, "headers": head, "trailers": False})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})
