"""Ollama's API on the same port, served from the same pool (see ollama for the translation).

ASGI middleware in front of the proxy: an Ollama chat, generate or embed
request is translated and handed to the proxy as the llama-server request it
becomes, so it takes the same way as every other (lease, flag rules, gate,
limits, metering, cleanup); the proxy's answer is translated back as it
passes, a stream event by event. The model routes (tags, ps, show, version)
are answered from the configuration, the pool and the GGUF headers. Errors are
Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from orchestrator import ollama
from orchestrator.errors import OrchestratorError
from orchestrator.ggufheader import GgufError, read_metadata
from orchestrator.http.proxy import ROUTE_LABEL
from orchestrator.policy import State
from orchestrator.routing import Route
from orchestrator.supervisor.pool import Pool

log = logging.getLogger("orchestrator.http.ollama")

# What /api/version says: the Ollama API version whose shapes these follow (clients check it).
OLLAMA_VERSION = "0.13.0"
_NDJSON = [(b"content-type", b"application/x-ndjson")]
_JSON = [(b"content-type", b"application/json")]
_NOT_SERVED = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})
# general.file_type of a GGUF (llama.cpp's llama_ftype) as Ollama names quantisations.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}  # fmt: skip


class OllamaApi:
    """ASGI middleware: Ollama's routes, translated onto ``proxy``; the rest passes on to ``app``."""

    def __init__(self, app: ASGIFramework, proxy: ASGIFramework, pool: Pool, max_body_bytes: int) -> None:
        self._app = app  # where everything else goes (the proxy, then Quart)
        self._proxy = proxy
        self._pool = pool
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self._app(scope, receive, send)
            return
        handler = self._handler(scope["method"], scope["path"])
        if handler is None:
            await self._app(scope, receive, send)
            return
        try:
            await handler(scope, receive, send)
        except ollama.OllamaRequestError as error:
            await _send_json(send, 400, {"error": str(error)})
        except OrchestratorError as error:
            await _send_json(send, error.http.status, {"error": str(error)})

    def _handler(
        self, method: str, path: str
    ) -> Callable[[HTTPScope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]] | None:
        if method == "POST" and path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
            return self._inference
        if method == "GET" and path == "/api/tags":
            return self._tags
        if method == "GET" and path == "/api/ps":
            return self._ps
        if method == "POST" and path == "/api/show":
            return self._show
        if method == "GET" and path == "/api/version":
            return _version
        if path in _NOT_SERVED or path.startswith("/api/blobs/"):
            return _not_served
        return None

    # -- inference ----------------------------------------------------------------

    async def _inference(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        body = await self._json_body(receive)
        path = scope["path"]
        name, route = self._route_of(body)
        keep = ollama.keep_alive_seconds(body.get("keep_alive"))  # checked before anything runs
        started = time.time()
        kind = path.removeprefix("/api/")
        flags_allowed = route.allow_request_flags
        if kind == "chat":
            translated = ollama.chat_request(body, flags_allowed=flags_allowed)
        elif kind == "generate":
            if not body.get("prompt") and not body.get("images") and not body.get("raw"):
                await self._load_or_unload(send, name, body)
                return
            translated = ollama.generate_request(body, flags_allowed=flags_allowed)
        else:
            translated = ollama.embed_request(body, legacy=kind == "embeddings")
        for ignored in translated.ignored:
            log.info("%s %s: option %s ignored", path, name, ignored)
        forwarded = {**translated.body, "model": name}
        if translated.flags:
            forwarded["llama_flags"] = list(translated.flags)
        key = self._pool.routes.resolve(name, translated.flags).key
        was_ready = self._pool.is_ready(key)
        answer = _Answer(
            send, ollama.Timing(name, started), kind=kind, raw=translated.path == ollama.COMPLETION_PATH,
            loading=not was_ready,
        )  # fmt: skip
        encoded = json.dumps(forwarded).encode()
        inner = _inner_scope(scope, translated.path, len(encoded), path)
        await self._proxy(inner, _receive_once(encoded, receive), answer.send)
        if keep is not None:  # before the answer ends: the lease's end (after it) applies the new TTL
            self._pool.keep_alive(key, keep)
        await answer.finish()

    async def _load_or_unload(self, send: ASGISendCallable, name: str, body: dict[str, Any]) -> None:
        """An empty generate: load the model (or, with keep_alive 0, unload it), as Ollama does."""
        keep = ollama.keep_alive_seconds(body.get("keep_alive"))
        spec = self._pool.routes.resolve(name)
        if keep == 0:
            sidecar = self._pool.get(spec.key)
            if sidecar is not None:
                self._pool.keep_alive(spec.key, 0)
            reason = "unload"
        else:
            await self._pool.preload(spec)
            if keep is not None:
                self._pool.keep_alive(spec.key, keep)
            reason = "load"
        document = {"model": name, "created_at": ollama.created_at(time.time()), "response": "", "done": True,
                    "done_reason": reason}  # fmt: skip
        await _send_json(send, 200, document)

    async def _json_body(self, receive: ASGIReceiveCallable) -> dict[str, Any]:
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ollama.OllamaRequestError("the client left before its request was whole")
            assert message["type"] == "http.request"
            raw += message.get("body", b"")
            if len(raw) > self._max_body_bytes:
                raise ollama.OllamaRequestError(
                    f"the request body is larger than {self._max_body_bytes} bytes (server.max_body_bytes)"
                )
            if not message.get("more_body", False):
                break
        try:
            body = json.loads(raw or b"{}")
        except ValueError as error:
            raise ollama.OllamaRequestError(f"the request body is not JSON: {error}") from error
        if not isinstance(body, dict):
            raise ollama.OllamaRequestError("the request body must be a JSON object")
        return body

    def _route_of(self, body: dict[str, Any]) -> tuple[str, Route]:
        routes = self._pool.routes
        name = body.get("model") or body.get("name") or routes.default()
        if not isinstance(name, str) or not name:
            raise ollama.OllamaRequestError("model is required")
        return name, routes.route(name)  # UnknownModelError: 404, the names it has

    # -- models -------------------------------------------------------------------

    async def _tags(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        entries = [await trio.to_thread.run_sync(_model_entry, route) for route in self._pool.routes.routes()]
        await _send_json(send, 200, {"models": entries})

    async def _ps(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        pool = self._pool
        running = []
        for route in pool.routes.routes():
            key = pool.routes.key_of(route.name)
            sidecar = pool.get(key)
            if sidecar is None or sidecar.state not in (State.READY, State.STARTING):
                continue
            entry = await trio.to_thread.run_sync(_model_entry, route)
            counted = pool.counted_bytes(key) or {}
            expires = pool.expires_at(key)
            running.append({
                "name": entry["name"], "model": entry["model"], "size": sum(counted.values()),
                "digest": entry["digest"], "details": entry["details"],
                # Never stopped for idleness: far ahead, as Ollama says for keep_alive -1.
                "expires_at": ollama.created_at(expires if expires is not None else 2**34),
                "size_vram": sum(amount for device, amount in counted.items() if device != "Host"),
                "context_length": _context_length(route, entry),
            })  # fmt: skip
        await _send_json(send, 200, {"models": running})

    async def _show(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        name, route = self._route_of(await self._json_body(receive))
        entry = await trio.to_thread.run_sync(_model_entry, route)
        metadata = entry.pop("_metadata")
        args = self._pool.routes.public_args(name)
        capabilities = ["embedding"] if "--embeddings" in args or "--embedding" in args else ["completion"]
        if "tools" in str(metadata.get("tokenizer.chat_template", "")):
            capabilities.append("tools")
        info = {
            k: v for k, v in metadata.items() if not k.startswith("tokenizer.") or isinstance(v, int | float)
        }
        await _send_json(send, 200, {
            "modelfile": f"# served by llama-sidecar from {os.path.basename(route.model.path)}\n",
            "parameters": "\n".join(args),
            "template": metadata.get("tokenizer.chat_template", ""),
            "details": entry["details"],
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": entry["modified_at"],
        })  # fmt: skip


@functools.lru_cache(maxsize=256)
def _metadata(path: str, size: int, modified: float) -> Mapping[str, Any]:
    """A GGUF's header, read once per version of the file (size and date are part of the key)."""
    try:
        return read_metadata(path)
    except (GgufError, OSError, ValueError):  # a file that is not a GGUF (the tests' fake): no details
        return {}


def _model_entry(route: Route) -> dict[str, Any]:
    """A configured name as Ollama lists a model (reads the GGUF header: run in a thread)."""
    path = route.model.path
    try:
        stat = os.stat(path)
        size, modified = stat.st_size, stat.st_mtime
    except OSError:
        size, modified = 0, 0.0
    metadata = _metadata(path, size, modified)
    architecture = str(metadata.get("general.architecture", ""))
    file_type = metadata.get("general.file_type")
    return {
        "name": route.name,
        "model": route.name,
        "modified_at": ollama.created_at(modified),
        "size": size,
        "digest": hashlib.sha256(f"{path}:{size}:{modified}".encode()).hexdigest(),
        "details": {
            "parent_model": "" if route.kind == "model" else route.model.name,
            "format": "gguf",
            "family": architecture,
            "families": [architecture] if architecture else [],
            "parameter_size": str(metadata.get("general.size_label", "")),
            "quantization_level": _FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
        },
        "_metadata": metadata,
    }


def _context_length(route: Route, entry: dict[str, Any]) -> int:
    flags = {flag.name: flag.values for layer in route.layers for flag in layer}
    size = (flags.get("--ctx-size") or ("",))[0]
    if size.isdigit() and int(size) > 0:
        return int(size)
    metadata = entry.get("_metadata", {})
    return int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 0) or 0)


async def _version(scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    await _send_json(send, 200, {"version": OLLAMA_VERSION})


async def _not_served(scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    verb = scope["path"].removeprefix("/api/").split("/")[0]
    await _send_json(send, 400, {"error": (
        f"{verb} is not served: llama-sidecar's models come from its configuration; add the GGUF file under "
        "[models] and reload (orchestrator config check, then POST /api/reload)"
    )})  # fmt: skip


async def _send_json(send: ASGISendCallable, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    head = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head, "trailers": False})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _inner_scope(scope: HTTPScope, path: str, length: int, label: str) -> HTTPScope:
    dropped = (b"content-length", b"content-type", b"transfer-encoding", b"x-llama-flags")
    headers = [(name, value) for name, value in scope["headers"] if name not in dropped]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    extensions = {**(scope.get("extensions") or {}), ROUTE_LABEL: {"path": label}}
    return {**scope, "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
            "extensions": extensions}  # fmt: skip


def _receive_once(body: bytes, client: ASGIReceiveCallable) -> ASGIReceiveCallable:
    """The translated body, then the client's own messages (its leaving, which the proxy listens for)."""
    sent = False

    async def receive() -> Any:
        nonlocal sent
        if sent:
            return await client()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _Answer:
    """The proxy's answer on its way to the client, turned into Ollama's."""

    def __init__(self, send: ASGISendCallable, timing: ollama.Timing, *, kind: str, raw: bool,
                 loading: bool) -> None:  # fmt: skip
        self._send = send
        self._timing = timing
        self._kind = kind
        self._loading = loading  # the child was not ready: the wait until the answer began was its load
        self._status = 0
        self._streaming = False
        self._collected: list[bytes] = []
        self._raw = raw
        self._stream = ollama.StreamTranslator(timing, generate=kind == "generate", raw=raw)
        self._done = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            self._streaming = self._status == 200 and content_type.startswith(b"text/event-stream")
            if self._loading:  # the answer began once the child had loaded: that wait is the load
                timing = self._timing
                self._timing = ollama.Timing(timing.model, timing.started, time.time() - timing.started)
                self._stream = ollama.StreamTranslator(self._timing, generate=self._kind == "generate",
                                                       raw=self._raw)  # fmt: skip
            if self._streaming:
                await self._send(
                    {"type": "http.response.start", "status": 200, "headers": _NDJSON, "trailers": False}
                )
            return
        body = message.get("body", b"")
        if self._streaming:
            lines = self._stream.feed(body, time.time())
            if lines:
                await self._send({"type": "http.response.body", "body": b"".join(lines), "more_body": True})
        else:
            self._collected.append(body)

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._streaming:
            tail = [] if self._stream.finished else self._stream.feed(b"\ndata: [DONE]\n", time.time())
            await self._send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
            return
        if self._status == 0:
            return  # the proxy sent nothing: the client left
        raw = b"".join(self._collected)
        if self._status != 200:
            await _send_json(self._send, self._status, ollama.error_answer(raw))
            return
        answer = json.loads(raw)
        now = time.time()
        if self._kind in ("embed", "embeddings"):
            document = ollama.embed_answer(answer, self._timing, legacy=self._kind == "embeddings", now=now)
        else:
            document = ollama.chat_answer(answer, self._timing, generate=self._kind == "generate", now=now)
        await _send_json(self._send, 200, document)
