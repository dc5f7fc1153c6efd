"""The exception hierarchy: every error the orchestrator raises on purpose.

Each one carries a message meant for a person: it names what was wrong and
what was expected. The proxy maps them to OpenAI-shaped HTTP errors and the
CLI to a short message and a non-zero exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

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


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises deliberately."""


class ConfigError(OrchestratorError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class FlagError(OrchestratorError):
    """A llama-server flag list is invalid; ``problems`` names each flag and what is wrong."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


class UnknownModelError(OrchestratorError):
    """A request named a model that no agent, model or alias provides."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"model {name!r} does not exist; known models: {', '.join(self.known) or '(none)'}")


class SpawnError(OrchestratorError):
    """A llama-server child could not be brought up; carries its stderr tail."""

    def __init__(self, message: str, stderr_tail: Sequence[str] = ()) -> None:
        self.stderr_tail = tuple(stderr_tail)
        self.reason = message
        detail = "\n".join(self.stderr_tail)
        super().__init__(f"{message}\n--- last stderr lines ---\n{detail}" if detail else message)


class BackoffError(SpawnError):
    """A model's child keeps failing; it is not respawned until its backoff ends."""

    def __init__(self, message: str, stderr_tail: Sequence[str], retry_after_s: int) -> None:
        super().__init__(message, stderr_tail)
        self.retry_after_s = retry_after_s


class CapacityError(OrchestratorError):
    """Every child is busy and the pool is full, or a child's queue is; the request gave up."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class OverloadedError(CapacityError):
    """A child is at its in-flight limit and its wait queue is full (HTTP 429)."""


class UpstreamError(OrchestratorError):
    """A child failed while serving a request (it died or the connection broke)."""


class UpstreamTimeoutError(UpstreamError):
    """A child sent nothing for longer than llama_server.upstream_idle_timeout_s."""
