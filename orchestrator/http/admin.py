"""The admin surface: sidecar and model management, stats, websocket feeds, the dashboard files.

``/ws/logs/{key}`` sends a child's recent stderr lines, then each new line as
it arrives, then how the child exited. ``/ws/events`` sends a snapshot of the
pool, then every pool event (spawn, starting, ready, request, evicted,
unhealthy, exited, stats). Each subscriber has a bounded queue: one that falls
behind loses lines and is told how many (``{"type": "dropped", "count"}``);
it never slows the child or the other subscribers.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Awaitable, Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath
from typing import Any

from quart import Response, websocket
from quart_trio import QuartTrio

from orchestrator import flags as flagmod
from orchestrator.errors import AmbiguousSidecarError, SidecarNotFoundError
from orchestrator.http.openai_errors import error_response
from orchestrator.routing import RouteTable
from orchestrator.supervisor.events import Reloaded
from orchestrator.supervisor.fanout import Dropped
from orchestrator.supervisor.fleetview import node_status
from orchestrator.supervisor.history import History
from orchestrator.supervisor.pool import Pool, SidecarLike
from orchestrator.supervisor.stats import StatsSampler

# Re-reads the configuration and applies it; says what was kept and what stopped.
Reloader = Callable[[], Awaitable[dict[str, Any]]]
_NOT_FOUND_CLOSE = 4404  # websocket close code: no such sidecar


class PoolView:
    """What the admin routes and feeds show about the pool."""

    def __init__(self, pool: Pool, stats: StatsSampler, history: History) -> None:
        self.pool = pool
        self.stats = stats
        self.history = history

    @property
    def routes(self) -> RouteTable:
        return self.pool.routes  # the current ones: a reload applies at once

    def sidecars(self) -> list[dict[str, Any]]:
        usage = self.stats.latest["sidecars"]
        return [{**entry, "usage": usage.get(entry["key"])} for entry in self.pool.describe()]

    def summary(self) -> dict[str, Any]:
        live = self.pool.sidecars()
        return {
            "live": len(live),
            "max_sidecars": self.routes.config.pool.max_sidecars,
            "evictions": self.pool.evictions,
            "in_flight": sum(self.pool.leases(s.key)[0] for s in live),
            "total_rss_bytes": self.stats.latest["total_rss_bytes"],
            "daemon": self.stats.latest["daemon"],
        }

    def memory(self) -> dict[str, Any]:
        """Budgets and use per device, each child's share, and the last admission decision."""
        planner = self.pool.memory
        budgets, totals = planner.budgets(), planner.totals()
        children: dict[str, list[dict[str, Any]]] = {device: [] for device in budgets}
        for entry in self.pool.describe():
            for device, mib in (entry["memory"] or {}).get("counted_mib", {}).items():
                children.setdefault(device, []).append(
                    {"key": entry["key"], "model": entry["model"], "mib": mib}
                )
        return {
            "devices": [
                {
                    "device": device,
                    "total_mib": round(totals.get(device, 0) / MiB),
                    "budget_mib": round(budget / MiB),
                    "used_mib": sum(child["mib"] for child in children[device]),
                    "children": children[device],
                }
                for device, budget in budgets.items()
            ],
            "max_sidecars": self.routes.config.pool.max_sidecars,
            "decisions": list(planner.decisions),  # the latest last
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything a feed's subscriber starts from (again after a reload), with the last minutes
        of stats samples and finished requests (``history``, oldest first) to draw from at once."""
        return {
            "type": "snapshot",
            "sidecars": self.sidecars(),
            "pool": self.summary(),
            "routes": self.configured(),
            "memory": self.memory(),
            "history": self.history.replay(),
            "history_s": self.history.window_s,
        }

    def configured(self) -> list[dict[str, Any]]:
        return [
            {
                "name": route.name,
                "kind": route.kind,
                "model": route.model.name,
                "key": self.routes.key_of(route.name),
                "flags": flagmod.render(route.spec().explicit),
            }
            for route in self.routes.routes()
        ]

    def find(self, ident: str) -> SidecarLike:
        """The live sidecar that ``ident`` names: its key, an agent, model or alias routed to it, or a
        unique key prefix. The one resolver of sidecar names: the CLI and the dashboard pass names on."""
        live = self.pool.sidecars()
        for sidecar in live:
            if sidecar.key == ident:
                return sidecar
        try:
            routed = self.pool.get(self.routes.key_of(ident))
        except KeyError:
            routed = None  # not a route name
        if routed is not None:
            return routed
        base, _dot, copy = ident.partition(".")  # a copy of a child: "<key prefix>.<n>", as ps shows it
        by_prefix = [s for s in live if s.key.startswith(base) and s.key.endswith(f".{copy}" if copy else "")]
        if len({s.spec.config_key for s in by_prefix}) == 1 and not copy:
            by_prefix = [s for s in by_prefix if not s.spec.copy_of] or by_prefix  # the first copy
        if len(by_prefix) == 1:
            return by_prefix[0]
        if by_prefix:
            keys = ", ".join(sorted(s.key[:12] for s in by_prefix))
            raise AmbiguousSidecarError(
                f"{ident!r} is the start of {len(by_prefix)} sidecar keys ({keys}); give more of it"
            )
        running = ", ".join(sorted(f"{s.key[:8]} ({s.spec.model})" for s in live)) or "none"
        raise SidecarNotFoundError(
            f"no live sidecar matches {ident!r} (a key, a unique key prefix, or an agent, model or alias "
            f"with a running child); running: {running}"
        )


def register_admin_routes(
    app: QuartTrio, pool: Pool, stats: StatsSampler, history: History, reload: Reloader,
    *, agent_port: int | None = None,
) -> None:
    view = PoolView(pool, stats, history)
    _register_api(app, view, reload)
    _register_fleet(app, pool, agent_port)
    _register_feeds(app, view)
    _register_dashboard(app)


def _register_api(app: QuartTrio, view: PoolView, reload: Reloader) -> None:
    pool = view.pool

    @app.post("/api/reload")
    async def reload_config() -> dict[str, Any]:
        return await reload()

    @app.get("/api/sidecars")
    async def list_sidecars() -> dict[str, Any]:
        pool_summary = view.summary()
        return {
            "sidecars": view.sidecars(),
            "max_sidecars": pool_summary["max_sidecars"],
            "evictions": pool_summary["evictions"],
            "pool": pool_summary,
            "backing_off": pool.backoffs(),
            "kv_cache": None if pool.kv is None else pool.kv.describe_store(),
        }

    @app.delete("/api/sidecars/<key>")
    async def delete_sidecar(key: str) -> dict[str, Any]:
        found = view.find(key)
        if not await pool.evict(found.key):
            raise SidecarNotFoundError(f"sidecar {found.key[:8]} exited before it could be stopped")
        return {"stopped": found.key, "model": found.spec.model}

    @app.post("/api/sidecars/<key>/restart")
    async def restart_sidecar(key: str) -> dict[str, Any]:
        found = view.find(key)
        fresh = await pool.restart(found.key)
        if fresh is None:
            raise SidecarNotFoundError(f"sidecar {found.key[:8]} exited before it could be restarted")
        return {"restarted": fresh.key, "sidecar": pool.describe_one(fresh)}

    @app.post("/api/models/<name>/load")
    async def load_model(name: str) -> dict[str, Any]:
        sidecar = await pool.preload(view.routes.resolve(name))
        return {"loaded": name, "sidecar": pool.describe_one(sidecar)}

    @app.get("/api/memory")
    async def get_memory() -> dict[str, Any]:
        return view.memory()

    @app.get("/api/stats")
    async def get_stats() -> dict[str, Any]:
        return {"pool": view.summary(), "sidecars": view.stats.latest["sidecars"]}

    @app.get("/api/config")
    async def get_config() -> dict[str, Any]:
        return {"routes": view.configured()}

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> tuple[dict[str, Any], int]:
        # 503 while draining: load balancers and probes stop sending new requests here.
        if pool.draining:
            return {"status": "draining", "sidecars": len(pool.sidecars())}, 503
        return {"status": "ok", "sidecars": len(pool.sidecars())}, 200


def _register_fleet(app: QuartTrio, pool: Pool, agent_port: int | None) -> None:
    @app.get("/api/fleet")
    async def fleet() -> dict[str, Any]:
        """What a router between machines needs of this daemon (``orchestrator fleet haproxy``)."""
        node = node_status(pool)
        return {
            "agent_port": agent_port,
            "draining": node.draining,
            "running_requests": node.running_requests,
            "queued_requests": node.queued_requests,
            "models": [
                {"name": m.name, "loaded": m.loaded, "loading": m.loading, "room": m.room.value}
                for m in node.models
            ],
        }


def _register_feeds(app: QuartTrio, view: PoolView) -> None:
    @app.websocket("/ws/logs/<key>")
    async def log_feed(key: str) -> None:
        await websocket.accept()
        try:
            sidecar = view.find(key)
        except (SidecarNotFoundError, AmbiguousSidecarError) as error:
            await websocket.send(
                json.dumps({"type": "error", "code": error.http.code, "message": str(error)})
            )
            await websocket.close(_NOT_FOUND_CLOSE, "no such sidecar")
            return
        feed, full_key = sidecar.stderr, sidecar.key
        # Subscribe and take the history with no checkpoint in between: no line twice, none missed.
        with feed.live.subscribe() as subscription:
            history = feed.history() if websocket.args.get("history", "1") != "0" else []
            for line in history:
                await websocket.send(
                    json.dumps({"type": "line", "key": full_key, "ts": line.ts, "text": line.text})
                )
            if websocket.args.get("follow", "1") == "0":
                await websocket.close(1000)
                return
            async for item in subscription:
                if isinstance(item, Dropped):
                    message: dict[str, Any] = {"type": "dropped", "key": full_key, "count": item.count}
                else:
                    message = {"type": "line", "key": full_key, "ts": item.ts, "text": item.text}
                await websocket.send(json.dumps(message))
        if feed.exit is None:  # the daemon is shutting down, the child is still running
            await websocket.close(1001, "the daemon is shutting down")
            return
        await websocket.send(json.dumps({"type": "exit", "key": full_key, **feed.exit}))
        await websocket.close(1000)

    @app.websocket("/ws/events")
    async def event_feed() -> None:
        await websocket.accept()
        with view.pool.events.subscribe() as subscription:
            await websocket.send(json.dumps(view.snapshot()))
            async for item in subscription:
                payload = (
                    {"type": "dropped", "count": item.count} if isinstance(item, Dropped) else item.to_json()
                )
                await websocket.send(json.dumps(payload))
                if not isinstance(item, Dropped) and isinstance(item.event, Reloaded):
                    await websocket.send(json.dumps(view.snapshot()))  # new routes, budgets, devices


# The dashboard's files are package data (orchestrator.web, from web/ in the source tree).
MiB = 1 << 20
_WEB_SUFFIXES = frozenset({".html", ".js", ".css", ".svg", ".png"})


def dashboard_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the dashboard by its path under /web/, with its content type; read once."""
    found: dict[str, tuple[bytes, str]] = {}
    pending: list[tuple[str, Traversable]] = [("", resources.files("orchestrator.web"))]
    while pending:
        prefix, folder = pending.pop()
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                pending.append((f"{name}/", entry))
            elif PurePosixPath(name).suffix in _WEB_SUFFIXES:
                content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
                found[name] = (entry.read_bytes(), content_type)
    return found


def _register_dashboard(app: QuartTrio) -> None:
    files = dashboard_files()

    @app.get("/")
    async def dashboard() -> Response:
        return await web_file("index.html")

    @app.get("/web/<path:name>")
    async def web_file(name: str) -> Response:
        if name not in files:  # only the shipped files: no path reaches anything else
            return error_response(
                404, f"the dashboard has no file {name!r}", "invalid_request_error", "not_found"
            )
        body, content_type = files[name]
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})
