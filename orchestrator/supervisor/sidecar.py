"""One llama-server child: spawn, pipes, readiness, health monitor, reaper, stop.

``Sidecar.run`` owns the process for its whole life. Its life is a small state
machine (``policy.TRANSITIONS``: starting, ready, unhealthy, stopping, exited)
that it reports as typed events (``events``), and it ends in exactly one
``Outcome``: stopped on purpose, crashed, or failed to start. ``run`` returns
when the child is gone, raising the SpawnError of a child that failed to start
(its stderr tail attached). Stopping is cancellation: the process task's
``deliver_cancel`` sends SIGTERM, waits ``stop_grace_s``, then SIGKILLs the
whole process group, and after every exit the group is swept again so no
grandchild survives.

The sidecar knows nothing of requests: leases, waiting and draining are the
pool's bookkeeping.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from orchestrator import policy, procgroup
from orchestrator.config import LlamaServerSettings
from orchestrator.errors import SpawnError, UpstreamError
from orchestrator.footprint import Footprint, parse_breakdown
from orchestrator.policy import State, StopReason
from orchestrator.routing import CHILD_HOST, SidecarSpec
from orchestrator.supervisor import logtail
from orchestrator.supervisor.events import (
    Crashed,
    Exited,
    FailedToStart,
    Outcome,
    Ready,
    SidecarEvent,
    Starting,
    Stopped,
    Unhealthy,
    outcome_json,
)
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.upstream import Upstream

E = TypeVar("E", bound=SidecarEvent)
log = logging.getLogger("orchestrator.supervisor.sidecar")
child_log = logging.getLogger("orchestrator.child")

TAIL_LINES = 400  # stderr lines kept per child
ERROR_TAIL_LINES = 20  # of which an error message quotes this many
PORT_ATTEMPTS = 3  # tries on different ports when the port was taken under us
READY_POLL_FIRST_S = 0.01  # readiness polls start fast and back off to...
READY_POLL_MAX_S = 0.25  # ...this; a stderr hint short-cuts the wait
PIPE_EOF_GRACE_S = 2.0  # after the group is killed, the pipes must close within this
STDERR_GATHER_S = 0.2  # a serving child's stderr is read at most this often, but for a flood
DEFAULT_SLOTS = 4  # llama-server's default --parallel
_READY_HINT = re.compile(r"model loaded|listening on")
_LAST_STARTUP_LINE = "listening on"  # llama-server logs it after "model loaded", once it serves
_BIND_FAILED = "couldn't bind HTTP server socket"
_ACCOUNTING = "memory_breakdown_print"  # llama-server's memory table, at --verbosity 4
ACCOUNTING_LINES = 64  # of it kept (a header and a row per device)


class Sidecar(Lifecycle):
    """One llama-server process and everything the supervisor knows about it."""

    def __init__(
        self,
        spec: SidecarSpec,
        *,
        env: Mapping[str, str],
        settings: LlamaServerSettings,
        allocate_port: Callable[[], int],
        restarts: int = 0,
        on_event: Callable[[SidecarEvent], None] = lambda _event: None,
        prepare: Callable[[Sidecar], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.restarts = restarts
        self.port: int | None = None
        self.pid: int | None = None
        self.argv: list[str] = []
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.slots = DEFAULT_SLOTS  # how many requests the child serves at once (from its /props)
        self.stderr = logtail.LogFeed(TAIL_LINES)
        self.outcome: Outcome | None = None  # set once, when it has exited
        self.measured: Footprint | None = None  # its own memory accounting (at -lv 4), once ready
        self._accounting: list[str] = []  # those lines, as they come while it loads
        self._exit_code: int | None = None
        self._failure: SpawnError | None = None  # why it could not start
        self._env = dict(env)
        self._settings = settings
        self._echo_level = logging.INFO if settings.echo_stderr else logging.DEBUG
        self._allocate_port = allocate_port
        self._on_event = on_event  # told: Starting, Ready, Unhealthy, Exited
        self._prepare = prepare  # once it answers, before it is ready (its saved KV cache restored)
        self._settled = trio.Event()  # ready, or gone
        self._exited = trio.Event()
        self._hint = trio.Event()
        self._process_exited = trio.Event()  # the current process (not the whole run) has exited
        self._port_taken = False
        self._startup_logged = False  # its "listening on" line has been read
        self._stop_requested = False
        self._life: trio.CancelScope | None = None
        self._upstream: Upstream | None = None  # HTTP to the current process

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def label(self) -> str:
        return f"[sidecar:{self.key[:8]}:{self.port}]"

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def upstream(self) -> Upstream:
        """HTTP to the running child (a ready sidecar always has one)."""
        assert self._upstream is not None, "the child has not started"
        return self._upstream

    # -- waiting on it ---------------------------------------------------------

    async def wait_settled(self) -> None:
        """Until the child is ready or gone (check ``state`` and ``outcome`` after)."""
        await self._settled.wait()

    async def wait_exited(self) -> None:
        await self._exited.wait()

    # -- life ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the child until it exits or is stopped; started() once it is ready."""
        try:
            for _attempt in range(PORT_ATTEMPTS):
                try:
                    port = self._allocate_port()
                except SpawnError as error:
                    self._failure = error
                    break
                if not await self._run_child(port, task_status):
                    break
            else:
                self._failure = SpawnError(
                    f"llama-server could not bind a port {PORT_ATTEMPTS} times in a row "
                    f"(last {self.port}); is something else using llama_server.port_range?",
                    self.stderr.tail(ERROR_TAIL_LINES),
                )
        finally:
            self._move(State.EXITED)
            if self._upstream is not None:
                self._upstream.close()
            self.outcome = outcome = self._outcome()
            self.stderr.finish(outcome_json(outcome))
            self._settled.set()
            self._exited.set()
            self._emit(Exited, outcome=outcome)
        if isinstance(outcome, FailedToStart):
            raise outcome.error

    def _outcome(self) -> Outcome:
        uptime = time.time() - self.started_at
        if self._out_of_service is not None:
            reason, detail = self._out_of_service
            return Stopped(reason, detail, self._exit_code, uptime)
        if self._failure is not None or self._exit_code is None:
            error = self._failure or SpawnError("llama-server never started")
            return FailedToStart(error, self._exit_code, uptime)
        return Crashed(self._exit_code, tuple(self.stderr.tail(ERROR_TAIL_LINES)), uptime)

    async def stop(self, reason: StopReason, detail: str) -> None:
        """Stop the child now (its requests, if any, fail) and wait until it is gone."""
        self.mark_stopping(reason, detail)
        self._cancel_life()
        await self._exited.wait()

    def _emit(self, event: type[E], **details: Any) -> None:
        self._on_event(event(key=self.key, model=self.spec.model, ts=time.time(), **details))

    def _cancel_life(self) -> None:
        self._stop_requested = True
        if self._life is not None:
            self._life.cancel()

    async def _run_child(self, port: int, task_status: trio.TaskStatus[None]) -> bool:
        """One process on one port; True means 'the port was taken, try another'."""
        self.port = port
        self.argv = self.spec.argv(port)
        if self._upstream is not None:  # the previous process (its port was taken) is gone
            self._upstream.close()
        self._upstream = Upstream(CHILD_HOST, port, self.label)
        self._process_exited = trio.Event()
        self._port_taken = False
        self._startup_logged = False
        process: trio.Process | None = None
        async with trio.open_nursery() as pipes:
            async with trio.open_nursery() as life:
                self._life = life.cancel_scope
                if self._stop_requested:
                    life.cancel_scope.cancel()
                try:
                    process = await life.start(self._process)
                except OSError as error:
                    self._failure = SpawnError(f"cannot start {self.spec.binary.path}: {error}")
                    return False
                self.pid = process.pid
                log.info("%s started pid %d: %s", self.label, process.pid, " ".join(self.argv))
                self._emit(Starting, pid=process.pid, port=port, argv=tuple(self.argv))
                assert process.stdout is not None and process.stderr is not None
                pipes.start_soon(logtail.pump_lines, process.stderr, self._on_stderr_line, self._stderr_pause)
                pipes.start_soon(logtail.drain, process.stdout)
                life.start_soon(self._cancel_when_exited, process, life.cancel_scope)
                timeout = self._settings.health_timeout_s
                with trio.move_on_after(timeout) as loading:
                    await self._wait_until_ready()
                if loading.cancelled_caught:
                    self._failure = SpawnError(
                        f"llama-server did not become ready within {timeout:g} s "
                        f"(llama_server.health_timeout_s); it was killed",
                        self.stderr.tail(ERROR_TAIL_LINES),
                    )
                else:
                    await self._serve_until_unhealthy(task_status)
                life.cancel_scope.cancel()
            if process is None:  # stopped before the process had even started
                return False
            # The direct child has exited; now no one in its group may survive.
            procgroup.kill_group(process.pid)
            self._process_exited.set()  # however it ended (a stop cancels the wait above): read the rest now
            pipes.cancel_scope.deadline = trio.current_time() + PIPE_EOF_GRACE_S
        assert process.returncode is not None
        self._exit_code = process.returncode
        if self.ready_at is not None:
            self._log_exit(process.returncode)
        if self.ready_at is not None or self._failure is not None or self._stop_requested:
            return False
        if self._port_taken:
            log.warning("%s port %d was taken; retrying on another port", self.label, port)
            return True
        self._failure = self._exit_while_loading(process.returncode)
        return False

    async def _read_slots(self) -> int:
        try:
            _status, body = await self.upstream.get("/props", timeout_s=2.0)
            return max(1, int(json.loads(body)["total_slots"]))
        except (UpstreamError, ValueError, KeyError, TypeError):
            return DEFAULT_SLOTS  # an older or odd llama-server: assume its default

    async def _serve_until_unhealthy(self, task_status: trio.TaskStatus[None]) -> None:
        """Mark the child ready, tell whoever started us, then watch its health."""
        self.slots = await self._read_slots()
        if self._prepare is not None:
            await self._prepare(self)
        self.measured = parse_breakdown(self._accounting)
        if self._state is State.STARTING:  # else it was taken out of service meanwhile
            self._move(State.READY)
        self.ready_at = time.time()
        log.info("%s ready in %.3f s", self.label, self.ready_at - self.started_at)
        self._settled.set()
        self._emit(Ready, load_s=round(self.ready_at - self.started_at, 3))
        task_status.started()
        await self._monitor_health()
        detail = f"/health failed {policy.HEALTH_FAILURE_LIMIT} times in a row"
        if self._take_out_of_service(State.UNHEALTHY, StopReason.UNHEALTHY, detail):
            self._emit(Unhealthy, detail=detail)
            log.warning("%s unhealthy: %s; killing it", self.label, detail)

    async def _process(self, *, task_status: trio.TaskStatus[trio.Process]) -> None:
        await trio.run_process(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
            env=self._env,
            deliver_cancel=self._terminate,
            task_status=task_status,
            **procgroup.spawn_options(),
        )

    async def _terminate(self, process: trio.Process) -> None:
        """SIGTERM, a grace period, then SIGKILL for the whole group."""
        # llama-server's shutdown waits for open client connections (0.1 s more with one idle
        # kept-alive one): close ours first. Nothing new can be sent to a child being stopped.
        self.upstream.close()
        procgroup.request_stop(process)
        with trio.move_on_after(self._settings.stop_grace_s):
            await process.wait()
        if process.returncode is None:
            log.warning("%s ignored SIGTERM for %g s; killing its process group",
                        self.label, self._settings.stop_grace_s)  # fmt: skip
        procgroup.kill_group(process.pid)

    async def _cancel_when_exited(self, process: trio.Process, scope: trio.CancelScope) -> None:
        await process.wait()
        self._process_exited.set()
        scope.cancel()

    async def _stderr_pause(self) -> None:
        # While it loads, each line may be the one readiness waits for; once it serves, none is
        # urgent until it exits, when the rest is read at once (its outcome waits for the pipes).
        # llama-server answers /health before its log thread has written the last start-up lines
        # ("model loaded", "listening on"): those are read at once too, so a child marked ready by
        # the poll has them in its log within a moment, not a gathering pause later.
        if self._state is not State.STARTING and self._startup_logged:
            with trio.move_on_after(STDERR_GATHER_S):
                await self._process_exited.wait()

    def _on_stderr_line(self, text: str) -> None:
        self.stderr.append(text)
        if child_log.isEnabledFor(self._echo_level):  # llama-server logs several lines per request
            child_log.log(self._echo_level, "%s %s", self.label, text)
        if not self._startup_logged and _LAST_STARTUP_LINE in text:
            self._startup_logged = True
        if self._state is State.STARTING:
            if _ACCOUNTING in text and len(self._accounting) < ACCOUNTING_LINES:
                self._accounting.append(text)
            if _READY_HINT.search(text):
                self._hint.set()
            if _BIND_FAILED in text:
                self._port_taken = True

    async def _health_status(self, timeout_s: float) -> int | None:
        """The HTTP status of /health, or None when the child does not answer."""
        try:
            status, _body = await self.upstream.get("/health", timeout_s)
        except UpstreamError:
            return None  # refused (not listening yet, or dead) or timed out: not healthy
        return status

    async def _wait_until_ready(self) -> None:
        """Poll /health (503 = loading, 200 = ready), waking early on a stderr hint."""
        delay = READY_POLL_FIRST_S
        while await self._health_status(timeout_s=1.0) != 200:
            with trio.move_on_after(delay):
                await self._hint.wait()
            self._hint = trio.Event()
            delay = min(delay * 2, READY_POLL_MAX_S)

    async def _monitor_health(self) -> None:
        """Return once /health has failed HEALTH_FAILURE_LIMIT times in a row."""
        interval = self._settings.health_interval_s
        failures = 0
        while not policy.unhealthy(failures):
            await trio.sleep(interval)
            healthy = await self._health_status(timeout_s=min(5.0, max(1.0, interval))) == 200
            failures = 0 if healthy else failures + 1

    def _exit_while_loading(self, returncode: int) -> SpawnError:
        message = f"llama-server exited while loading ({procgroup.describe_exit(returncode)})"
        if procgroup.is_illegal_instruction(returncode):
            message += (
                "; this llama-server build uses CPU instructions this machine lacks: build one "
                "for this CPU with `orchestrator llama-server build` (found automatically) "
                "or set llama_server.bin to one that runs here"
            )
        return SpawnError(message, self.stderr.tail(ERROR_TAIL_LINES))

    def _log_exit(self, returncode: int) -> None:
        """Log the end of a child that had been ready (a failed start is a SpawnError instead)."""
        uptime = time.time() - self.started_at
        how = procgroup.describe_exit(returncode)
        if self.stop_reason is not None:
            log.info("%s stopped (%s), %s after %.1f s", self.label, self.stop_detail, how, uptime)
            return
        tail = "\n".join(self.stderr.tail(ERROR_TAIL_LINES))
        log.warning("%s exited unexpectedly, %s after %.1f s; last stderr lines:\n%s",
                    self.label, how, uptime, tail)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The child's public state (wall-clock times, no secrets); the pool adds its leases."""
        return {
            "key": self.key,
            "model": self.spec.model,
            "port": self.port,
            "pid": self.pid,
            "state": self._state.value,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "slots": self.slots,
            "restarts": self.restarts,
            "exit_code": self._exit_code,
            "stderr_tail_lines": len(self.stderr),
            "argv": self.argv,
        }
