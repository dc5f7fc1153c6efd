"""The model list and llama.cpp's router-mode model management, in its shape.

``GET /models`` and ``GET /v1/models`` list every agent, model and alias with a
``status`` as llama.cpp's router reports it (``loaded``, ``loading``,
``unloaded``; a failed one is ``unloaded`` with ``failed`` and ``exit_code``),
its public command line, and what it is here (kind, model, key). ``POST
/models/load`` starts a name's child and answers at once (its status says when
it is loaded); ``POST /models/unload`` stops it once its requests are done. So
llama.cpp's WebUI, or any router-mode client, can pick, load and unload our
models. Nothing here spawns a child but ``/models/load``.
"""

from __future__ import annotations

import json
from typing import Any

from quart import request
from quart_trio import QuartTrio

from orchestrator.errors import (
    MissingModelError,
    ModelAlreadyRunningError,
    ModelNotRunningError,
)
from orchestrator.policy import State
from orchestrator.supervisor.pool import Pool


def register_model_routes(app: QuartTrio, pool: Pool) -> None:
    """The routes are the pool's current ones, read per request: a reload applies at once."""

    @app.get("/v1/models")
    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry(pool, route.name) for route in pool.routes.routes()]}

    @app.post("/models/load")
    async def router_load() -> dict[str, Any]:
        name = await _named(pool)
        spec = pool.routes.resolve(name)
        if _running(pool, spec.key):
            raise ModelAlreadyRunningError(f"model {name!r} is already running (its status says how far)")
        pool.load_soon(spec)
        return {"success": True}

    @app.post("/models/unload")
    async def router_unload() -> dict[str, Any]:
        name = await _named(pool)
        key = pool.routes.resolve(name).key
        if not _running(pool, key) or not await pool.evict(
            key, detail="unloaded on request (/models/unload)"
        ):
            raise ModelNotRunningError(f"model {name!r} is not running")
        return {"success": True}


def _running(pool: Pool, key: str) -> bool:
    sidecar = pool.get(key)
    return sidecar is not None and sidecar.state in (State.STARTING, State.READY)


async def _named(pool: Pool) -> str:
    """The ``model`` of a router-mode request's JSON body."""
    try:
        body = json.loads(await request.get_data())
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    name = body.get("model") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise MissingModelError([route.name for route in pool.routes.routes()])
    return name


def model_entry(pool: Pool, name: str) -> dict[str, Any]:
    """One name as router-mode clients read it, plus what it is here."""
    routes = pool.routes
    route = routes.route(name)
    spec = routes.resolve(name)
    args = routes.public_args(name)
    sidecar = pool.get(spec.key)
    status: dict[str, Any]
    if sidecar is not None and sidecar.state is State.READY:
        status = {"value": "loaded", "args": args}
    elif sidecar is not None and sidecar.state is State.STARTING:
        status = {"value": "loading", "args": args}
    else:
        status = {"value": "unloaded", "args": args}
        failure = pool.last_failure(spec.key)
        if failure is not None:
            status |= {"failed": True, "exit_code": failure.exit_code, "error": failure.reason}
    images = "--mmproj" in (flag.name for flag in spec.flags)
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "llama-sidecar",
        "status": status,
        "architecture": {
            "input_modalities": ["text", "image"] if images else ["text"],
            "output_modalities": ["text"],
        },
        "kind": route.kind,
        "model": route.model.name,
        "aliases": list(spec.names),
        "sidecar_key": spec.key,
        "allow_request_flags": route.allow_request_flags,
    }
