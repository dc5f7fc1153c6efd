"""Every llama-server route the daemon serves by model, as one table: a line per route, no handler each.

Pure. A route says where the name of the model is (the JSON body's ``model``
field, a multipart form field, or the ``model`` query parameter) and what
else the one way through needs to know: whether a streamed answer may show a
loading child, whether the child's answer names server paths that must not
leave the machine. The path goes to the child as it came: llama.cpp's own
spellings (``/v1/rerank``, ``/rerank``, ``/reranking``...) each reach the
handler llama-server has for them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass


class ModelIn(enum.Enum):
    """Where a request names its model."""

    BODY = "body"  # the JSON body's "model" field
    FORM = "form"  # a multipart/form-data field "model" (the body is streamed to the child)
    QUERY = "query"  # the "model" query parameter


@dataclass(frozen=True)
class ApiRoute:
    """One llama-server route served through the pool."""

    method: str
    path: str
    model_in: ModelIn
    shows_loading: bool = False  # a streamed answer may show a child that is loading (chat)
    hides_paths: bool = False  # the answer names the model's file: it is replaced by the public name


def _routes(method: str, model_in: ModelIn, paths: Iterable[str], **options: bool) -> list[ApiRoute]:
    return [ApiRoute(method, path, model_in, **options) for path in paths]


# llama-server's inference routes (tools/server/server.cpp), the version-less spellings included.
ROUTES: dict[tuple[str, str], ApiRoute] = {
    (route.method, route.path): route
    for route in (
        *_routes("POST", ModelIn.BODY, ["/v1/chat/completions", "/chat/completions"], shows_loading=True),
        *_routes(
            "POST",
            ModelIn.BODY,
            [
                "/v1/completions",
                "/completions",
                "/completion",
                "/v1/responses",
                "/responses",
                "/v1/messages",
                "/v1/messages/count_tokens",
                "/v1/chat/completions/input_tokens",
                "/chat/completions/input_tokens",
                "/v1/responses/input_tokens",
                "/responses/input_tokens",
                "/v1/chat/completions/control",
                "/v1/embeddings",
                "/embeddings",
                "/embedding",
                "/v1/rerank",
                "/rerank",
                "/reranking",
                "/v1/reranking",
                "/infill",
                "/tokenize",
                "/detokenize",
                "/apply-template",
                "/v1/systemone",
            ],
        ),
        *_routes("POST", ModelIn.FORM, ["/v1/audio/transcriptions", "/audio/transcriptions"]),
        # Read-only routes of one child, named by ?model= (our own /metrics answers without it).
        *_routes("GET", ModelIn.QUERY, ["/slots", "/lora-adapters", "/metrics"]),
        ApiRoute("GET", "/props", ModelIn.QUERY, hides_paths=True),
    )
}
PATHS = frozenset(path for _method, path in ROUTES)
OWN_WITHOUT_MODEL = frozenset({"/metrics"})  # answered by the daemon itself when no model is named
SLOT_ACTION_PREFIX = "/slots/"  # POST /slots/{id}?action=save|restore|erase: the supervisor's alone
UPSTREAM_PREFIX = "/upstream/"
# Router-mode model management, in llama.cpp's shape (GET /models, POST /models/load|unload).
MODEL_MANAGEMENT = frozenset({"/models", "/v1/models", "/models/load", "/models/unload"})
# Ollama's API (see ollama, http.ollama): its inference and model routes are the API keys', as ours are.
OLLAMA_PATHS = frozenset({
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/tags", "/api/ps", "/api/show",
    "/api/version", "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
})  # fmt: skip


def find(method: str, path: str, query_has_model: bool) -> ApiRoute | None:
    """The route for a request, or None when the daemon answers it itself (or nobody does)."""
    route = ROUTES.get((method, path))
    if route is not None and path in OWN_WITHOUT_MODEL and not query_has_model:
        return None
    return route


def needs_api_key(path: str) -> bool:
    """Whether ``path`` is opened by the API keys (else the admin keys): the inference routes, the model
    list and router-mode management. A child's slots, metrics and raw routes (/upstream) are admin's."""
    if path in ("/slots", "/metrics") or path.startswith((SLOT_ACTION_PREFIX, UPSTREAM_PREFIX)):
        return False
    return path in PATHS or path in MODEL_MANAGEMENT or path in OLLAMA_PATHS or path.startswith("/v1/")


def is_slot_action(method: str, child_path: str) -> bool:
    """Whether a request would make a child save, restore or erase a slot (a file of its choosing)."""
    slots = child_path == "/slots" or child_path.startswith(SLOT_ACTION_PREFIX)
    return slots and method not in ("GET", "HEAD")


def upstream_target(path: str, query: str) -> tuple[str, str] | None:
    """``/upstream/{name}/{rest}`` -> (name, the child's target ``/{rest}?{query}``); None when the path
    could leave that child: ``.`` or ``..`` segments, an empty name, a backslash, a NUL, ``//``.

    ``path`` is as decoded by the server; an encoded ``%2e%2e`` is ``..`` by then and refused too.
    """
    if not path.startswith(UPSTREAM_PREFIX):
        return None
    name, slash, rest = path[len(UPSTREAM_PREFIX) :].partition("/")
    segments = rest.split("/")
    if (
        not name
        or name in (".", "..")
        or any(segment in (".", "..") for segment in segments)
        or any(bad in path for bad in ("\\", "\x00", "//"))
    ):
        return None
    target = "/" + rest if slash else "/"
    return name, target + (f"?{query}" if query else "")


def hide_model_path(body: bytes, public_name: str) -> bytes | None:
    """A child's /props with the model file's path replaced by the name it was asked by (None: no path
    in it). llama-server always reports ``model_path``; an answer must not show the server's files."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # not the JSON /props answers: nothing of ours to change
    if not isinstance(document, dict) or "model_path" not in document:
        return None
    document["model_path"] = public_name
    return json.dumps(document).encode()
