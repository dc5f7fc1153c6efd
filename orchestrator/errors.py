"""The exception hierarchy: every error the orchestrator raises on purpose, and what each means on HTTP.

Each one carries a message meant for a person: it names what was wrong and
what was expected. Each class declares its HTTP meaning (status, OpenAI error
``type`` and ``code``) in its own body, the way h11's errors carry a status
hint, so the HTTP layer reads it instead of deciding by ``isinstance`` in an
order that matters; a test walks every subclass to prove that none is mapped
by accident. Errors that only the CLI and the tools raise say so: their
meaning is ``CLI_ONLY``.

    OrchestratorError
    ├── ConfigError              400 invalid_config (with every problem)
    ├── FlagError                400 invalid_llama_flags
    ├── MissingModelError        400 missing_model (no model named, and no default)
    ├── UnknownModelError        404 model_not_found
    ├── ModelNotRunningError     400 model_not_running (unload of a model with no child)
    ├── ModelAlreadyRunningError 400 model_already_running (load of a model with one)
    ├── SlotActionError          403 slot_action_refused
    ├── SidecarNotFoundError     404 sidecar_not_found
    ├── AmbiguousSidecarError    409 ambiguous_sidecar
    ├── SpawnError               502 sidecar_spawn_failed
    │   └── BackoffError         503 sidecar_backing_off, Retry-After
    ├── CapacityError            503 pool_busy, Retry-After
    │   └── OverloadedError      429 sidecar_overloaded, Retry-After
    ├── InsufficientMemoryError  503 insufficient_memory
    ├── UpstreamError            502 sidecar_failed
    │   └── UpstreamTimeoutError 504 sidecar_timeout
    ├── BinaryNotFoundError      CLI only (reached through ConfigError on a reload)
    ├── ListenError              CLI only
    ├── CommandError             CLI only
    ├── BenchError               CLI only
    ├── BuildError               CLI only
    ├── EndpointError            CLI only
    └── DataMissingError         CLI only

    Internal signals, never shown to anyone as they are (plain Exceptions):
    HelpUnreadableError, StaleConnectionError, MalformedResponseError, AskFailed, RequestFailed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

E = TypeVar("E", bound=BaseException)


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups, or the error itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaf_exceptions(inner)]
    return [error]


def only_errors_of(group: BaseExceptionGroup[BaseException], kind: type[E]) -> E | None:
    """The first ``kind`` error in a nursery's group when it holds nothing else; None when it does."""
    matched, rest = group.split(kind)
    if matched is None or rest is not None:
        return None
    first = leaf_exceptions(matched)[0]
    assert isinstance(first, kind)
    return first


@dataclass(frozen=True)
class HttpMeaning:
    """What an error is on HTTP: the status and the OpenAI error's ``type`` and ``code``."""

    status: int
    type: str
    code: str


# For errors raised only by the CLI and the tools, which no HTTP client ever sees.
CLI_ONLY = HttpMeaning(500, "server_error", "internal_error")


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises deliberately."""

    http: ClassVar[HttpMeaning] = CLI_ONLY
    retry_after_s: int | None = None  # seconds, for errors that send Retry-After


class ConfigError(OrchestratorError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    http = HttpMeaning(400, "invalid_request_error", "invalid_config")

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class FlagError(OrchestratorError):
    """A llama-server flag list is invalid; ``problems`` names each flag and what is wrong."""

    http = HttpMeaning(400, "invalid_request_error", "invalid_llama_flags")

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


class MissingModelError(OrchestratorError):
    """A request named no model, and the configuration has no default one."""

    http = HttpMeaning(400, "invalid_request_error", "missing_model")

    def __init__(self, known: Sequence[str]) -> None:
        self.known = tuple(known)
        super().__init__(
            "the request names no model and this daemon has no default one: give \"model\" (an agent, "
            f"model or alias: {', '.join(self.known) or '(none configured)'}), or set server.default_model"
        )


class ModelNotRunningError(OrchestratorError):
    """An unload named a model that has no child running."""

    http = HttpMeaning(400, "invalid_request_error", "model_not_running")


class ModelAlreadyRunningError(OrchestratorError):
    """A load named a model whose child is already running (or loading)."""

    http = HttpMeaning(400, "invalid_request_error", "model_already_running")


class SlotActionError(OrchestratorError):
    """A client asked a child to save, restore or erase a slot: the supervisor owns where slot files go."""

    http = HttpMeaning(403, "permission_error", "slot_action_refused")


class UnknownModelError(OrchestratorError):
    """A request named a model that no agent, model or alias provides."""

    http = HttpMeaning(404, "invalid_request_error", "model_not_found")

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"model {name!r} does not exist; known models: {', '.join(self.known) or '(none)'}")


class SidecarNotFoundError(OrchestratorError):
    """No live sidecar matches a key, key prefix, agent, model or alias name."""

    http = HttpMeaning(404, "invalid_request_error", "sidecar_not_found")


class AmbiguousSidecarError(OrchestratorError):
    """A key prefix matches more than one live sidecar."""

    http = HttpMeaning(409, "invalid_request_error", "ambiguous_sidecar")


class SpawnError(OrchestratorError):
    """A llama-server child could not be brought up; carries its stderr tail."""

    http = HttpMeaning(502, "server_error", "sidecar_spawn_failed")

    def __init__(self, message: str, stderr_tail: Sequence[str] = ()) -> None:
        self.stderr_tail = tuple(stderr_tail)
        self.reason = message
        detail = "\n".join(self.stderr_tail)
        super().__init__(f"{message}\n--- last stderr lines ---\n{detail}" if detail else message)


class BackoffError(SpawnError):
    """A model's child keeps failing; it is not respawned until its backoff ends."""

    http = HttpMeaning(503, "server_error", "sidecar_backing_off")

    def __init__(self, message: str, stderr_tail: Sequence[str], retry_after_s: int) -> None:
        super().__init__(message, stderr_tail)
        self.retry_after_s = retry_after_s


class CapacityError(OrchestratorError):
    """Every child is busy and the pool is full, or a child's queue is; the request gave up."""

    http = HttpMeaning(503, "server_error", "pool_busy")

    def __init__(self, message: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class OverloadedError(CapacityError):
    """A child is at its in-flight limit and its wait queue is full."""

    http = HttpMeaning(429, "rate_limit_error", "sidecar_overloaded")


class InsufficientMemoryError(OrchestratorError):
    """A child can never fit the memory budgets (or only with pinned ones gone): refused at once."""

    http = HttpMeaning(503, "server_error", "insufficient_memory")


class UpstreamError(OrchestratorError):
    """A child failed while serving a request (it died or the connection broke)."""

    http = HttpMeaning(502, "server_error", "sidecar_failed")


class UpstreamTimeoutError(UpstreamError):
    """A child sent nothing for longer than llama_server.upstream_idle_timeout_s."""

    http = HttpMeaning(504, "server_error", "sidecar_timeout")


class BinaryNotFoundError(OrchestratorError):
    """No llama-server binary could be found."""

    http = CLI_ONLY  # at start-up; a reload reports it inside a ConfigError


class ListenError(OrchestratorError):
    """The daemon's own address could not be bound (in use, or not ours)."""

    http = CLI_ONLY


class CommandError(OrchestratorError):
    """A CLI command failed in a way the user can act on; printed without a traceback."""

    http = CLI_ONLY


class BenchError(OrchestratorError):
    """A benchmark cannot run: no daemon, a model that does not start, bad arguments."""

    http = CLI_ONLY


class BuildError(OrchestratorError):
    """llama-server could not be built or installed: a tool missing, the download or compiler failed."""

    http = CLI_ONLY


class EndpointError(OrchestratorError):
    """The eval's endpoint cannot answer any question (unreachable, unknown model, key refused)."""

    http = CLI_ONLY


class DataMissingError(OrchestratorError):
    """An eval's data package is not installed."""

    http = CLI_ONLY


# -- internal signals ----------------------------------------------------------------


class HelpUnreadableError(Exception):
    """A binary's --help could not be run or did not look like llama-server's (the fallback table is used)."""


class StaleConnectionError(Exception):
    """A kept-alive connection was closed by the child before it answered: safe to send again."""


class MalformedResponseError(Exception):
    """What a child sent is not an HTTP/1.1 response, or it cut one short (the upstream names the child)."""


class AskFailed(Exception):
    """An eval's endpoint did not answer one question (not recorded: a rerun asks again)."""


class RequestFailed(Exception):
    """A benchmark request got an error status or a broken stream."""
