"""Finding llama-server and the demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import discovery
from orchestrator.dirs import DATA_DIR_ENV
from orchestrator.discovery import find_llama_server
from orchestrator.errors import BinaryNotFoundError


def test_demo_model_is_found_without_importing_its_package(demo_model: Path) -> None:
    assert demo_model.name == discovery.DEMO_MODEL_FILE
    assert demo_model.stat().st_size > 50_000_000
    config = discovery.demo_config()
    assert config.models["smollm2"].path == str(demo_model)
    assert config.models["smollm2"].aliases == ("smol",)


def test_configured_binary_by_path_or_name(tmp_path: Path, fake_binary: discovery.LlamaServerBinary) -> None:
    assert find_llama_server(fake_binary.path).origin == "config"
    assert find_llama_server("sh").path.endswith("/sh")
    with pytest.raises(
        BinaryNotFoundError, match="'no-such-llama' is not an executable file or a command on PATH"
    ):
        find_llama_server("no-such-llama")
    (tmp_path / "plain").write_text("")
    with pytest.raises(BinaryNotFoundError):
        find_llama_server(str(tmp_path / "plain"))  # not executable


@pytest.fixture
def empty_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """Every default place discovery looks at, empty: this Python's scripts, the user's data, PATH."""
    places = {name: tmp_path / name for name in ("scripts", "data", "path")}
    for folder in places.values():
        folder.mkdir()
    monkeypatch.setattr("sysconfig.get_path", lambda _name: str(places["scripts"]))
    monkeypatch.setenv(DATA_DIR_ENV, str(places["data"]))
    absent = discovery.Candidate("wheel", None, None, "absent")
    monkeypatch.setattr(discovery, "_wheel_candidate", lambda: absent)
    monkeypatch.setenv("PATH", str(places["path"]))
    return places


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'version: 1 (test)'\n")
    path.chmod(0o755)
    return path


def test_nothing_installed_says_how_to_get_one(empty_places: dict[str, Path]) -> None:
    with pytest.raises(BinaryNotFoundError, match="`orchestrator llama-server build`"):
        find_llama_server(None)
    lines = discovery.describe_candidates(discovery.candidates(None))
    assert len(lines) == 4 and all(": not used: " in line for line in lines), lines
    assert lines[0].startswith(f"1. {empty_places['scripts'] / 'llama-server'} (built for this CPU")
    assert lines[0].endswith("not used: not there")
    assert lines[3] == "4. on PATH: not used: no such command on PATH"


def test_a_per_user_build_is_found_and_one_next_to_this_python_comes_first(
    empty_places: dict[str, Path],
) -> None:
    per_user = executable(empty_places["data"] / "bin" / "llama-server")
    assert find_llama_server(None) == discovery.LlamaServerBinary(str(per_user), "build")
    on_path = executable(empty_places["path"] / "llama-server")
    next_to_python = executable(empty_places["scripts"] / "llama-server")
    assert find_llama_server(None).path == str(next_to_python)
    lines = discovery.describe_candidates(discovery.candidates(None))
    assert lines[0].endswith(": used")
    assert lines[1].endswith(": there, not used: an earlier one comes first")
    assert lines[3] == f"4. {on_path} (on PATH): there, not used: an earlier one comes first"
    next_to_python.chmod(0o644)
    assert lines[0] != (lines := discovery.describe_candidates(discovery.candidates(None)))[0]
    assert lines[0].endswith("not used: not executable") and lines[1].endswith(": used")
