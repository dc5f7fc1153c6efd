"""Importing llama-swap configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator import llamaswap
from orchestrator.config import load_config
from orchestrator.errors import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "llama-swap.yaml"


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "models").mkdir()
    for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"):
        (tmp_path / "models" / name).write_bytes(b"GGUF")
    bin_dir = tmp_path / "llama"
    bin_dir.mkdir()
    return {"LLAMA_HOME": str(bin_dir), "MODELS": str(tmp_path / "models")}


def convert(environ: dict[str, str], ctx_size: int | None = None) -> llamaswap.Conversion:
    document = llamaswap.load_yaml(FIXTURE.read_text(), "swap.yaml")
    return llamaswap.convert(document, "swap.yaml", environ, ctx_size)


def test_models_are_mapped_with_macros_comments_and_owned_flags_handled(environ: dict[str, str]) -> None:
    result = convert(environ)
    document: dict[str, Any] = result.document
    assert document["llama_server"] == {
        "health_timeout_s": 300,
        "bin": f"{environ['LLAMA_HOME']}/llama-server",
    }
    assert document["pool"] == {"max_sidecars": 1, "idle_ttl_s": 900}
    assert list(document["models"]) == ["smollm2", "gemma"]
    smol = document["models"]["smollm2"]
    assert smol["path"] == f"{environ['MODELS']}/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol["flags"] == [  # the ${common} macro expanded in place
        "--ctx-size", "4096", "-ngl", "99", "--jinja", "-fa",
        "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
    ]  # fmt: skip
    assert smol["aliases"] == ["smol", "gpt-4o-mini"] and smol["ttl_s"] == 300
    gemma = document["models"]["gemma"]
    assert gemma["flags"][:2] == ["--ctx-size", "8192"]  # the model's own macro won
    assert gemma["aliases"] == ["gemma-small"] and "ttl_s" not in gemma  # ttl -1: the global one


def test_what_cannot_be_mapped_is_a_warning_per_model_and_key(environ: dict[str, str]) -> None:
    warnings = "\n".join(convert(environ).warnings)
    for expected in (
        "swap.yaml: groups: not mapped",
        "swap.yaml: hooks: not mapped",
        "swap.yaml: models.gemma.filters: not mapped",
        "swap.yaml: models.gemma.cmdStop: not mapped",
        "swap.yaml: models.gemma.cmd: --host is set by llama-sidecar; dropped",
        "swap.yaml: models.from-the-hub.cmd: no local model file",
        "swap.yaml: models.in-docker.proxy: not mapped",
        "swap.yaml: models.in-docker.cmd: runs 'docker', not llama-server; left out",
    ):
        assert expected in warnings
    assert "--port" not in warnings  # dropping --port ${PORT} is expected, not worth a warning
    assert "name: not mapped" not in warnings


def test_ctx_size_override_replaces_every_models_context(environ: dict[str, str]) -> None:
    for entry in convert(environ, ctx_size=32768).document["models"].values():
        assert entry["flags"].count("--ctx-size") == 1
        assert entry["flags"][-2:] == ["--ctx-size", "32768"]


def test_a_missing_environment_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="environment variable LLAMA_HOME is not set"):
        convert({})


def test_the_toml_output_is_a_config_that_loads(tmp_path: Path, environ: dict[str, str]) -> None:
    output = tmp_path / "orchestrator.toml"
    output.write_text(llamaswap.to_toml(convert(environ).document))
    config = load_config(output)
    assert sorted(config.models) == ["gemma", "smollm2"]
    assert config.models["smollm2"].ttl_s == 300
    assert config.pool.max_sidecars == 1


def test_serve_accepts_the_yaml_directly(
    tmp_path: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = load_config(FIXTURE)
    assert sorted(config.models) == ["gemma", "smollm2"]
    assert any("groups: not mapped" in note for note in config.notes)
    assert os.environ["MODELS"] in config.models["gemma"].path


@pytest.mark.parametrize(
    ("macros", "message"),
    [
        ({"a": "x-${a}"}, "macro 'a' contains itself"),
        ({"a": "${b}", "b": "${a}"}, "macros keep expanding"),
        ({"a": "${nowhere}"}, r"unknown macro \$\{nowhere\}"),
    ],
)
def test_broken_macros_are_errors_naming_the_model(macros: dict[str, str], message: str) -> None:
    document = {"macros": macros, "models": {"m": {"cmd": "llama-server --port ${PORT} -m ${a}"}}}
    with pytest.raises(ConfigError, match=message) as raised:
        llamaswap.convert(document, "swap.yaml", {})
    assert "models.m" in str(raised.value)
