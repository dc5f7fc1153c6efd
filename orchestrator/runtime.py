"""The daemon: one root nursery holding the pool and the HTTP server, and the shutdown order.

Shutdown: stop accepting and let in-flight requests finish (bounded by
server.shutdown_grace_s), then stop every child (SIGTERM, grace, SIGKILL to
the group), then return. A second signal skips the wait.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

from orchestrator.auth import AccessRules, exposure_problem
from orchestrator.errors import ConfigError, ListenError, OrchestratorError, leaf_exceptions
from orchestrator.http.agentcheck import AgentCheck
from orchestrator.http.app import create_app
from orchestrator.http.connections import sever_connections
from orchestrator.routing import RouteTable, SidecarSpec
from orchestrator.sdnotify import Notifier
from orchestrator.supervisor.history import History
from orchestrator.supervisor.kvcache import KvCache, store_dir
from orchestrator.supervisor.memory import MemoryPlanner
from orchestrator.supervisor.metrics import PoolMetrics
from orchestrator.supervisor.pool import Pool
from orchestrator.supervisor.stats import StatsSampler
from orchestrator.supervisor.watchdog import Watchdog, own_state_file

log = logging.getLogger("orchestrator")
# hypercorn's own messages: its errors, through our handlers, without its INFO "Running on ...".
_server_log = logging.getLogger("orchestrator.http.server")
_server_log.setLevel(logging.WARNING)
CUT_AFTER_GRACE_S = 1.0  # hypercorn cancels its handlers at the grace; what is still stuck after this is cut
CUT_CHECK_S = 0.25
STATUS_INTERVAL_S = 1.0


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Daemon:
    """The whole orchestrator for one configuration."""

    def __init__(
        self,
        routes: RouteTable,
        load_routes: Callable[[], RouteTable] | None = None,
        *,
        insecure: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        """``load_routes`` re-reads the configuration (blocking: run in a thread) for reloads.

        ``insecure``: serve a network address without keys. Otherwise every
        configuration, the first and each reload, must set keys for one (ConfigError).
        """
        self._insecure = insecure
        self._notifier = notifier or Notifier.from_environment()  # systemd, when it runs us
        self._check_exposure(routes)
        self.config = routes.config
        self.routes = routes
        self._load_routes = load_routes
        self.pool: Pool | None = None
        self.history: History | None = None  # the last minutes of samples and requests, once it runs
        self._shutdown = trio.Event()
        self._stop_accepting = trio.Event()  # the drain notice is over: hypercorn takes nothing new
        self._reloading = trio.Lock()  # SIGHUP and POST /api/reload take turns
        self._stopping_at_once = False  # a second signal came
        self._url = ""  # where it serves, once it does
        self._nursery: trio.Nursery | None = None
        self.agent_port: int | None = None  # HAProxy's agent check, once it listens (server.agent_port)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``request_shutdown``; started() with the base URL once listening."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._notifier.run)
            watchdog = Watchdog(own_state_file())
            await nursery.start(watchdog.run)
            memory = MemoryPlanner.with_learned(self.routes.config)
            await trio.to_thread.run_sync(memory.discover, self.routes)
            kv = KvCache(self.config.kv_cache, store_dir(self.config.kv_cache))
            await nursery.start(kv.run, self.routes)
            pool = self.pool = Pool(self.routes, watchdog, memory=memory, kv=kv)
            metrics = PoolMetrics(pool)  # before anything starts: every spawn is counted
            history = self.history = History(pool)
            await nursery.start(pool.run)
            stats = StatsSampler(pool)
            await nursery.start(stats.run)
            if self.config.server.agent_port is not None:
                agent = AgentCheck(pool, self.config.server.host, self.config.server.agent_port)
                self.agent_port = await nursery.start(agent.run)
            nursery.start_soon(self._on_shutdown, pool)
            server_config = hypercorn.config.Config()
            server_config.bind = [bind_address(self.config.server.host, self.config.server.port)]
            server_config.graceful_timeout = self.config.server.shutdown_grace_s
            server_config.accesslog = None
            server_config.errorlog = _server_log  # our format; its "Running on" line repeats ours
            app = create_app(pool, stats, history, metrics, self.reload, agent_port=self.agent_port)
            async with trio.open_nursery() as server:
                served = trio.Event()
                try:
                    binds = await server.start(self._serve_http, app, server_config, served)
                except* OSError as group:  # hypercorn binds inside its own nurseries
                    reason = "; ".join(str(getattr(e, "strerror", e)) for e in leaf_exceptions(group))
                    raise ListenError(f"cannot listen on {server_config.bind[0]}: {reason}") from group
                binaries = sorted({f"{r.binary.path} ({r.binary.origin})" for r in self.routes.routes()})
                log.info("serving on %s with llama-server %s", binds[0], ", ".join(binaries))
                server.start_soon(self._cut_stuck_connections, int(binds[0].rsplit(":", 1)[1]), served)
                self._url = binds[0]
                nursery.start_soon(self._start_at_boot, pool, self.routes)
                self._notifier.ready(self._status_line(pool))
                nursery.start_soon(self._report_status, pool)
                task_status.started(binds[0])
            # hypercorn has returned: nothing new is accepted and in-flight requests are done.
            await pool.stop_all()
            nursery.cancel_scope.cancel()

    async def _serve_http(
        self,
        app: Any,
        server_config: hypercorn.config.Config,
        served: trio.Event,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await hypercorn.trio.serve(
                app, server_config, shutdown_trigger=self._stop_accepting.wait, task_status=task_status
            )
        finally:
            served.set()

    async def _cut_stuck_connections(self, port: int, served: trio.Event) -> None:
        """Once shutdown has had its grace, cut what still holds it up; at once on a second signal,
        or when the daemon is cancelled without a shutdown (its parent failed).

        Shielded once shutdown begins: a second signal cancels everything, and a
        connection stuck in hypercorn's shielded write would then hold the process
        forever. The wait for a shutdown is not: a cancelled daemon gets none.
        """
        cancelled = True
        try:
            await self._stop_accepting.wait()
            cancelled = False
        finally:
            with trio.CancelScope(shield=True):
                grace = 0.0 if cancelled else self.config.server.shutdown_grace_s + CUT_AFTER_GRACE_S
                await self._cut_until_served(port, served, trio.current_time() + grace)

    async def _cut_until_served(self, port: int, served: trio.Event, cut_at: float) -> None:
        while not served.is_set():
            with trio.move_on_after(CUT_CHECK_S):
                await served.wait()
            if served.is_set() or not (self._stopping_at_once or trio.current_time() >= cut_at):
                continue
            if severed := sever_connections(port):
                log.warning("shutdown: cut %d connection(s) whose clients stopped reading", severed)

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply it; ConfigError (old config kept) if it is invalid.

        Reloads are serialised: one that comes while another runs waits for it.
        """
        async with self._reloading:
            self._notifier.reloading()
            try:
                return await self._reload()
            finally:
                assert self.pool is not None
                self._notifier.ready(self._status_line(self.pool))

    async def _reload(self) -> dict[str, Any]:
        if self._load_routes is None:
            raise ConfigError(["this daemon was started without a config file: there is nothing to reload"])
        assert self.pool is not None
        routes = await trio.to_thread.run_sync(self._load_routes)  # ConfigError: nothing changes
        self._check_exposure(routes)
        await trio.to_thread.run_sync(self.pool.memory.discover, routes)
        if (routes.config.server.host, routes.config.server.port) != (
            self.config.server.host,
            self.config.server.port,
        ):
            log.warning("reload: server.host and server.port only change on a restart")
        kept, stopping = self.pool.apply(routes)
        assert self._nursery is not None
        self._nursery.start_soon(self._start_at_boot, self.pool, routes)  # newly pinned or preloaded ones
        self.routes, self.config = routes, routes.config
        log.info(
            "reloaded %s: kept %d sidecar(s), stopping %d", routes.config.source, len(kept), len(stopping)
        )
        return {"reloaded": routes.config.source, "kept": kept, "stopping": stopping}

    def _check_exposure(self, routes: RouteTable) -> None:
        server = routes.config.server
        problem = None if self._insecure else exposure_problem(server.host, AccessRules.of(server))
        if problem is not None:
            raise ConfigError([f"{routes.config.source}: {problem}"])

    async def _on_shutdown(self, pool: Pool) -> None:
        await self._shutdown.wait()
        self._notifier.stopping()
        pool.draining = True  # /health answers 503, HAProxy's agent check "drain"
        notice = self.config.server.drain_notice_s
        if notice > 0:
            # Routers notice at their next check; until then what they send is still served.
            log.info("draining: /health answers 503 for %g s (server.drain_notice_s) before the shutdown",
                     notice)  # fmt: skip
            await trio.sleep(notice)
        self._stop_accepting.set()
        pool.close_feeds()  # websocket feeds never end on their own; hypercorn's drain would wait for them

    @staticmethod
    async def _start_at_boot(pool: Pool, routes: RouteTable) -> None:
        """Start the pinned and preloaded children (in the background: serving does not wait)."""

        async def start(spec: SidecarSpec) -> None:
            try:
                await pool.preload(spec)
            except OrchestratorError as error:
                log.error("could not start %s at boot: %s", spec.model, error)

        async with trio.open_nursery() as starting:
            for spec in routes.started_at_boot():
                if pool.get(spec.key) is None:
                    starting.start_soon(start, spec)

    def _status_line(self, pool: Pool) -> str:
        return f"serving on {self._url}; {pool.summary_line()}"

    async def _report_status(self, pool: Pool) -> None:
        """Keep the service manager's status line current (at most once a second)."""
        sent = ""
        while not self._shutdown.is_set():
            line = self._status_line(pool)
            if line == sent:
                await pool.wait_changed()
                continue
            self._notifier.status(line)
            sent = line
            await trio.sleep(STATUS_INTERVAL_S)

    async def serve_until_signal(self, *, until_stdin_closes: bool = False) -> None:
        """Run with SIGINT/SIGTERM meaning a graceful stop (a second one: stop at once).

        ``until_stdin_closes``: also stop gracefully once stdin reaches end-of-file,
        i.e. when the process that started us and holds the pipe's other end exits,
        however it exits (the benchmark and eval tools start daemons this way).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals, nursery.cancel_scope)
            if until_stdin_closes:
                nursery.start_soon(self._stop_at_stdin_eof)
            await self.run()
            nursery.cancel_scope.cancel()

    async def _stop_at_stdin_eof(self) -> None:
        # A thread, so that it works on every platform; abandoned (left blocked) when we stop first.
        while await trio.to_thread.run_sync(os.read, sys.stdin.fileno(), 65536, abandon_on_cancel=True):
            pass  # nothing is ever sent; only the end matters
        log.info("stdin closed: the process that started this daemon is gone; shutting down")
        self.request_shutdown()

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        watched = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
        with trio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                if signum == getattr(signal, "SIGHUP", None):
                    try:
                        await self.reload()
                    except ConfigError as error:
                        log.error("reload refused; the old configuration stays:\n%s", error)
                    continue
                if self._shutdown.is_set():
                    log.warning("second %s: stopping at once", signal.Signals(signum).name)
                    self._stopping_at_once = True
                    scope.cancel()
                    return
                log.info("%s: shutting down gracefully", signal.Signals(signum).name)
                self.request_shutdown()
