"""What happens in the pool, as frozen values: one class per kind of event, and a child's outcome.

A sidecar reports its life (``Starting``, ``Ready``, ``Unhealthy``, ``Exited``)
to the pool; the pool adds its own (``Spawned``, ``RequestStarted``,
``RequestFinished``, ``Evicted``), the KV cache store ``KvSaved``, ``KvRestored``
and ``KvDropped``, and the stats sampler ``Stats``. The pool acts
on them, the websocket feed sends them (``to_json``), and metrics count them.

A child's life ends in exactly one ``Outcome``: ``Stopped`` on purpose (with
the reason), ``Crashed`` after it had been ready, or ``FailedToStart``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.errors import SpawnError
from orchestrator.policy import StopReason
from orchestrator.procgroup import describe_exit

# -- outcomes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    """Taken out of service on purpose (evicted, restarted, reloaded, shut down, found unhealthy)."""

    kind: ClassVar[str] = "stopped"
    reason: StopReason
    detail: str
    exit_code: int | None
    uptime_s: float

    def failure(self) -> SpawnError | None:
        return None  # not a failure: no crash-loop backoff


@dataclass(frozen=True)
class Crashed:
    """Exited on its own after it had been ready."""

    kind: ClassVar[str] = "crashed"
    exit_code: int
    stderr_tail: tuple[str, ...]
    uptime_s: float

    def failure(self) -> SpawnError:
        return SpawnError(
            f"llama-server exited unexpectedly ({describe_exit(self.exit_code)})", self.stderr_tail
        )


@dataclass(frozen=True)
class FailedToStart:
    """Never became ready: it exited while loading, timed out, or could not be run or bound."""

    kind: ClassVar[str] = "failed_to_start"
    error: SpawnError
    exit_code: int | None
    uptime_s: float

    def failure(self) -> SpawnError:
        return self.error


Outcome = Stopped | Crashed | FailedToStart


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """How a child ended, for the feeds: code, uptime, outcome, and the reason or the error."""
    document: dict[str, Any] = {
        "code": outcome.exit_code,
        "uptime_s": round(outcome.uptime_s, 3),
        "outcome": outcome.kind,
    }
    if isinstance(outcome, Stopped):
        document |= {"reason": outcome.reason.value, "detail": outcome.detail}
    elif (failure := outcome.failure()) is not None:
        document["error"] = failure.reason
    return document


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SidecarEvent:
    """Something that happened to the sidecar ``key`` at wall-clock time ``ts``."""

    kind: ClassVar[str]
    key: str
    model: str
    ts: float

    def details(self) -> dict[str, Any]:
        """The event's own fields, as JSON values."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("key", "model", "ts")
        }

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "key": self.key, "model": self.model, "ts": self.ts, **self.details()}


@dataclass(frozen=True)
class Spawned(SidecarEvent):
    """The pool created a sidecar for the key (``restarts``: how many it had before)."""

    kind: ClassVar[str] = "spawn"
    restarts: int


@dataclass(frozen=True)
class Starting(SidecarEvent):
    """Its llama-server process started."""

    kind: ClassVar[str] = "starting"
    pid: int
    port: int
    argv: tuple[str, ...]

    def details(self) -> dict[str, Any]:
        return {"pid": self.pid, "port": self.port, "argv": list(self.argv)}


@dataclass(frozen=True)
class Ready(SidecarEvent):
    """It answers requests; ``load_s`` after its start."""

    kind: ClassVar[str] = "ready"
    load_s: float


@dataclass(frozen=True)
class Unhealthy(SidecarEvent):
    """It stopped answering /health; it is being killed."""

    kind: ClassVar[str] = "unhealthy"
    detail: str


@dataclass(frozen=True)
class Exited(SidecarEvent):
    """Its process is gone, with nothing left of its group; the sidecar's last event."""

    kind: ClassVar[str] = "exited"
    outcome: Outcome

    def details(self) -> dict[str, Any]:
        return outcome_json(self.outcome)


@dataclass(frozen=True)
class RequestFigures:
    """One proxied request as its client saw it: what it asked for, how it ended, how fast."""

    asked: str  # the agent, model or alias named in the body ("" when it named none we know)
    route: str  # /v1/chat/completions, ...
    status: int
    duration_s: float
    ttft_s: float | None = None  # to the first byte of the answer's body
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    tokens_per_s: float | None = None  # generation only, the child's own figure
    code: str | None = None  # the error code, when we refused it ourselves

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _RequestEvent(SidecarEvent):
    kind: ClassVar[str] = "request"
    phase: ClassVar[str]
    in_flight: int

    def details(self) -> dict[str, Any]:
        return {"phase": self.phase, "in_flight": self.in_flight}


@dataclass(frozen=True)
class RequestStarted(_RequestEvent):
    """A request leased it; ``in_flight`` counts this one."""

    phase: ClassVar[str] = "started"


@dataclass(frozen=True)
class RequestFinished(_RequestEvent):
    """A request's lease ended; ``in_flight`` no longer counts it. ``figures``: none for a preload."""

    phase: ClassVar[str] = "finished"
    figures: RequestFigures | None = None

    def details(self) -> dict[str, Any]:
        figures = None if self.figures is None else self.figures.to_json()
        return {**super().details(), "figures": figures}


@dataclass(frozen=True)
class RequestRefused:
    """A request the daemon answered itself, with no child (unknown model, full queue, backoff...)."""

    kind: ClassVar[str] = "request"
    model: str | None  # the configured model it would have gone to, if its name was known
    ts: float
    figures: RequestFigures

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "phase": "refused",
            "key": None,
            "model": self.model,
            "ts": self.ts,
            "figures": self.figures.to_json(),
        }


@dataclass(frozen=True)
class BackingOff(SidecarEvent):
    """Its model failed ``failures`` times within the crash-loop window: no new child for ``for_s``."""

    kind: ClassVar[str] = "backoff"
    failures: int
    for_s: float


@dataclass(frozen=True)
class Evicted(SidecarEvent):
    """The pool (or someone through it) took it out of service."""

    kind: ClassVar[str] = "evicted"
    reason: StopReason
    detail: str

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True)
class KvSaved(SidecarEvent):
    """One of its slots was saved to the KV cache store before it stopped (see kvcache)."""

    kind: ClassVar[str] = "kv_saved"
    slot: int
    tokens: int
    bytes: int
    took_s: float


@dataclass(frozen=True)
class KvRestored(SidecarEvent):
    """A saved slot was loaded into it before it became ready; ``cached_tokens``: what a request found."""

    kind: ClassVar[str] = "kv_restored"
    slot: int
    tokens: int
    bytes: int
    took_s: float
    cached_tokens: int | None


@dataclass(frozen=True)
class KvDropped(SidecarEvent):
    """A slot was not saved (``action`` "save") or a saved one not restored ("restore"), and why."""

    kind: ClassVar[str] = "kv_dropped"
    action: str
    slot: int
    reason: str


@dataclass(frozen=True)
class Stats:
    """A usage sample of the daemon and each sidecar's process tree (see stats)."""

    kind: ClassVar[str] = "stats"
    ts: float
    daemon: Mapping[str, Any] | None
    sidecars: Mapping[str, Mapping[str, Any]]
    total_rss_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "ts": self.ts,
            "daemon": self.daemon,
            "sidecars": self.sidecars,
            "total_rss_bytes": self.total_rss_bytes,
        }


@dataclass(frozen=True)
class Reloaded:
    """The pool serves a new configuration (``kept`` children stay, ``stopping`` ones drain)."""

    kind: ClassVar[str] = "reloaded"
    ts: float
    kept: tuple[str, ...]
    stopping: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "ts": self.ts, "kept": list(self.kept), "stopping": list(self.stopping)}


PoolEvent = SidecarEvent | Stats | RequestRefused | Reloaded


@dataclass(frozen=True)
class Published:
    """An event as the feeds get it: with the sidecar's description at that moment."""

    event: PoolEvent
    sidecar: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        document = self.event.to_json()
        if self.sidecar is not None:
            document["sidecar"] = self.sidecar
        return document
