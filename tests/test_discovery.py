"""Finding llama-server and the demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import discovery
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


def test_nothing_installed_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sysconfig.get_path", lambda _name: str(tmp_path))
    monkeypatch.setattr(discovery, "_wheel_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BinaryNotFoundError, match=r"build-llama-server\.sh"):
        find_llama_server(None)
