"""The error hierarchy: every error class declares what it means on HTTP, explicitly."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import orchestrator
from orchestrator.errors import (
    CLI_ONLY,
    BackoffError,
    CapacityError,
    ConfigError,
    OrchestratorError,
    OverloadedError,
    SpawnError,
    UpstreamTimeoutError,
)
from orchestrator.http.openai_errors import response_for


def every_error_class() -> list[type[OrchestratorError]]:
    """Every subclass of OrchestratorError in the package, wherever it is defined."""
    for module in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: list[type[OrchestratorError]] = []
    pending = [OrchestratorError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_class_declares_its_http_meaning_itself_and_lives_in_errors() -> None:
    classes = every_error_class()
    assert len(classes) >= 17
    for cls in classes:
        assert cls.__module__ == "orchestrator.errors", f"{cls.__name__} belongs in orchestrator/errors.py"
        assert "http" in vars(cls), f"{cls.__name__} inherits its HTTP meaning: declare it"
        if cls.http.status == 500:
            assert cls.http is CLI_ONLY, f"{cls.__name__} maps to 500 without saying it is CLI-only"


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (OverloadedError("busy", retry_after_s=1), 429, "sidecar_overloaded", "1"),
        (CapacityError("full", retry_after_s=15), 503, "pool_busy", "15"),
        (BackoffError("keeps failing", ["tail"], retry_after_s=4), 503, "sidecar_backing_off", "4"),
        (SpawnError("no"), 502, "sidecar_spawn_failed", None),
        (UpstreamTimeoutError("silent"), 504, "sidecar_timeout", None),
    ],
)
async def test_a_subclass_gets_its_own_status_not_its_parents(
    error: OrchestratorError, status: int, code: str, retry_after: str | None
) -> None:
    response = response_for(error)
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    assert (await response.get_json())["error"]["code"] == code


async def test_a_config_error_carries_every_problem() -> None:
    response = response_for(ConfigError(["a: wrong", "b: wrong too"]))
    assert response.status_code == 400
    assert (await response.get_json())["problems"] == ["a: wrong", "b: wrong too"]
