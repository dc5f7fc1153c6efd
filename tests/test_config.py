"""Loading configuration: formats, defaults, and errors that name file, key and expectation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError

FULL_TOML = """
[server]
host = "127.0.0.1"
port = 8081

[llama_server]
bin = "llama-server"
base_args = ["--threads", "2"]
health_timeout_s = 90
health_interval_s = 2.5
port_range = [42000, 42099]
stop_grace_s = 3

[pool]
max_sidecars = 3
idle_ttl_s = 600

[models.smollm2]
path = "model.gguf"
flags = ["-c", "2048"]
aliases = ["smol"]

[agents.coder]
model = "smollm2"
flags = ["-c", "4096"]
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_full_toml(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "c.toml").write_text(FULL_TOML)
    config = load_config(tmp_path / "c.toml")
    assert config.server.port == 8081
    assert config.llama_server.port_range == (42000, 42099)
    assert config.llama_server.health_interval_s == 2.5
    assert config.pool.max_sidecars == 3 and config.pool.idle_ttl_s == 600
    assert config.models["smollm2"].path == str(model_file)  # relative to the config file
    assert config.models["smollm2"].aliases == ("smol",)
    assert config.agents["coder"].model == "smollm2"


def test_json_with_a_bom_is_the_same_structure(tmp_path: Path, model_file: Path) -> None:
    document = {"models": {"m": {"path": str(model_file)}}, "pool": {"max_sidecars": 1}}
    (tmp_path / "c.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(document).encode())
    config = load_config(tmp_path / "c.json")
    assert list(config.models) == ["m"] and config.pool.max_sidecars == 1
    assert config.server.host == "127.0.0.1"  # loopback unless told otherwise


def test_every_problem_is_reported_with_file_and_key(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        """
[server]
port = "eighty"
[pool]
max_sidecars = 0
colour = "blue"
[models.a]
path = "missing.gguf"
[models.b]
path = "model.gguf"
flags = ["--port", "9"]
aliases = ["b"]
[agents.x]
model = "nope"
[surprise]
"""
    )
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "bad.toml")
    text = str(raised.value)
    source = str(tmp_path / "bad.toml")
    assert f"{source}: server.port: expected a port 0-65535, got 'eighty'" in text
    assert "pool.max_sidecars: expected an integer >= 1, got 0" in text
    assert "pool.colour: unknown key; expected one of" in text
    assert "models.a.path: file not found" in text
    assert "models.b.flags: --port is set by the supervisor" in text
    assert "models.b.aliases: the name 'b' is already used by models.b" in text
    assert "agents.x.model: expected the name of a configured model (b), got 'nope'" in text
    assert "surprise: unknown section" in text
    assert len(raised.value.problems) == 8


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.toml", "[server", "not valid TOML"),
        ("c.json", "{", "not valid JSON"),
        ("c.yaml", "a: 1", "unknown file type '.yaml'; expected .toml or .json"),
        ("c.json", "[]", "expected a table/object at the top level"),
    ],
)
def test_unreadable_documents(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
