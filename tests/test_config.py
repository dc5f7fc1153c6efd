"""Loading configuration: formats, defaults, and errors that name file, key and expectation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import BinaryNotFoundError, ConfigError
from orchestrator.flags import FlagTable, builtin_table

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
default_model = "nobody"
send_loading_state = "yes"
[pool]
max_sidecars = -1
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
    assert "pool.max_sidecars: expected an integer >= 0, got -1" in text
    assert "pool.colour: unknown key; expected one of" in text
    assert "models.a.path: file not found" in text
    assert "models.b.flags: --port is set by the supervisor" in text
    assert "models.b.aliases: the name 'b' is already used by models.b" in text
    assert "agents.x.model: expected the name of a configured model (b), got 'nope'" in text
    assert "surprise: unknown section" in text
    assert "server.default_model: expected an agent, model or alias name (b), got 'nobody'" in text
    assert "server.send_loading_state: expected true or false, got 'yes'" in text
    assert len(raised.value.problems) == 10


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.toml", "[server", "not valid TOML"),
        ("c.json", "{", "not valid JSON"),
        ("c.ini", "a = 1", "unknown file type '.ini'; expected .toml, .json or a llama-swap .yaml"),
        ("c.yaml", "a: 1", "not a llama-swap config"),
        ("c.yaml", "a: [", "not valid YAML"),
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


def test_per_model_settings(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "c.toml").write_text(
        """
[pool]
idle_ttl_s = 600
[models.m]
path = "model.gguf"
bin = "/opt/llama-b5000/llama-server"
ttl_s = 30
allow_request_flags = true
[models.n]
path = "model.gguf"
[agents.a]
model = "n"
allow_request_flags = true
"""
    )
    config = load_config(tmp_path / "c.toml")
    m, n = config.models["m"], config.models["n"]
    assert (m.bin, m.ttl_s, m.allow_request_flags) == ("/opt/llama-b5000/llama-server", 30, True)
    assert (n.bin, n.ttl_s, n.allow_request_flags) == (None, None, False)
    assert config.agents["a"].allow_request_flags
    assert config.bins() == {"/opt/llama-b5000/llama-server", None}


def test_flags_are_checked_against_each_models_binary_and_all_problems_reported(
    tmp_path: Path, model_file: Path
) -> None:
    strict = FlagTable(builtin_table().specs, authoritative=True, source="test")
    asked: list[str | None] = []

    def table_for(setting: str | None) -> FlagTable:
        asked.append(setting)
        if setting == "missing":
            raise BinaryNotFoundError(
                "llama_server.bin = 'missing' is not an executable file or a command on PATH"
            )
        return strict

    (tmp_path / "c.toml").write_text(
        """
[llama_server]
base_args = ["--threads", "two"]
[models.a]
path = "model.gguf"
flags = ["-c", "4096", "--ctx-sise", "1", "--host", "0.0.0.0"]
[models.b]
path = "model.gguf"
bin = "missing"
[agents.x]
model = "a"
flags = ["--draft-max", "4"]
"""
    )
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "c.toml", table_for)
    problems = "\n".join(raised.value.problems)
    assert "llama_server.base_args: --threads: expected an integer, got 'two'" in problems
    assert (
        "models.a.flags: --ctx-sise is not a flag of this llama-server; did you mean --ctx-size?" in problems
    )
    assert "models.a.flags: --host is set by the supervisor" in problems
    assert "models.b.bin: llama_server.bin = 'missing' is not an executable" in problems
    assert "agents.x.flags: --draft-max was removed from llama.cpp" in problems
    assert len(raised.value.problems) == 5
    assert sorted(asked, key=str) == [None, "missing"]  # each binary asked once


def test_allowed_hosts_and_origins_are_checked(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[server]\nallowed_hosts = ["box.lan", "[fe80::1]", "http://x.example", "x.example:80"]\n'
        'allowed_origins = ["https://chat.example.com", "chat.example.com", "http://x.example/path"]\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "c.toml")
    problems = raised.value.problems
    assert len(problems) == 4
    assert any("allowed_hosts: 'http://x.example' is not a host name" in p for p in problems)
    assert any("allowed_hosts: 'x.example:80' is not a host name" in p for p in problems)
    assert any("allowed_origins: 'chat.example.com' is not a web origin" in p for p in problems)
    (tmp_path / "ok.toml").write_text(
        '[server]\nallowed_hosts = ["box.lan", "[fe80::1]"]\nallowed_origins = ["https://chat.example.com"]\n'
    )
    server = load_config(tmp_path / "ok.toml").server
    assert server.allowed_hosts == ("box.lan", "[fe80::1]")
    assert server.allowed_origins == ("https://chat.example.com",)


def test_any_host_needs_keys(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[server]\nallowed_hosts = ["*"]\n')
    with pytest.raises(ConfigError, match=r"server.allowed_hosts: '\*' \(any Host\) needs server.api_keys"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "k.toml").write_text('[server]\nallowed_hosts = ["*"]\napi_keys = ["sk-0123456789abcdef"]\n')
    assert load_config(tmp_path / "k.toml").server.allowed_hosts == ("*",)


def test_keys_can_come_from_files_one_a_line_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "api").write_text("# the chat UI's\nsk-from-a-file-0001\n\nsk-from-a-file-0002\n")
    (tmp_path / "keys" / "admin").write_text("admin-from-a-file-01\n")
    (tmp_path / "c.toml").write_text(
        '[server]\napi_keys = ["sk-inline-0123456789"]\napi_keys_file = "keys/api"\n'
        'admin_keys_file = "keys/admin"\n'
    )
    server = load_config(tmp_path / "c.toml").server
    assert server.api_keys == ("sk-inline-0123456789", "sk-from-a-file-0001", "sk-from-a-file-0002")
    assert server.admin_keys == ("admin-from-a-file-01",)
    (tmp_path / "keys" / "api").write_text("short\n")
    (tmp_path / "bad.toml").write_text('[server]\napi_keys_file = "keys/api"\nadmin_keys_file = "nope"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "bad.toml")
    problems = str(raised.value)
    assert "server.api_keys_file: keys/api: expected keys of at least 16 characters each" in problems
    assert "short" not in problems  # a secret is never shown
    assert "server.admin_keys_file: cannot read nope: No such file or directory" in problems


def test_devices_pin_a_model_or_agent_to_gpus_as_their_device_flag(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "c.toml").write_text(
        """
[pool]
placement = "pack"
[models.m]
path = "model.gguf"
devices = ["CUDA1"]
[agents.a]
model = "m"
flags = ["-c", "4096"]
devices = ["CUDA0", "CUDA2"]
"""
    )
    config = load_config(tmp_path / "c.toml")
    assert config.pool.placement == "pack"
    assert [(f.name, f.values) for f in config.models["m"].flags] == [("--device", ("CUDA1",))]
    assert ("--device", ("CUDA0,CUDA2",)) in [(f.name, f.values) for f in config.agents["a"].flags]


def test_replicas_max_and_the_copy_settings(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "c.toml").write_text(
        """
[pool]
replica_wait_s = 5
replica_idle_ttl_s = 0
[models.m]
path = "model.gguf"
replicas_max = 3
[agents.a]
model = "m"
"""
    )
    config = load_config(tmp_path / "c.toml")
    assert (config.pool.replica_wait_s, config.pool.replica_idle_ttl_s) == (5, 0)
    assert config.models["m"].placement.replicas_max == 3
    assert config.agents["a"].placement is None  # the model's
    (tmp_path / "c.toml").write_text('[models.m]\npath = "model.gguf"\nreplicas_max = 0\n')
    with pytest.raises(ConfigError, match=r"models.m.replicas_max: expected an integer >= 1, got 0"):
        load_config(tmp_path / "c.toml")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('[pool]\nplacement = "fill"', "pool.placement: expected one of spread, pack, off, got 'fill'"),
        ('[models.m]\npath = "model.gguf"\ndevices = ["CPU"]', "models.m.devices: 'CPU' is not a GPU's name"),
        ('[models.m]\npath = "model.gguf"\ndevices = []', "models.m.devices: expected at least one device"),
        ('[models.m]\npath = "model.gguf"\ndevices = "CUDA0"', "models.m.devices: expected a list of str"),
        (
            '[models.m]\npath = "model.gguf"\ndevices = ["CUDA0"]\nflags = ["--main-gpu", "1"]',
            "models.m.devices: set either devices or the flags --device, --main-gpu",
        ),
    ],
)
def test_bad_placement_settings_are_named(tmp_path: Path, model_file: Path, lines: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(lines + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "c.toml")
    assert message in str(caught.value)
