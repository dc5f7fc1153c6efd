"""Names to sidecar specs: sharing, argv layout, and keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.errors import MissingModelError, UnknownModelError
from orchestrator.routing import LlamaServerBinary, RouteTable
from tests.conftest import make_config

BINARY = LlamaServerBinary("/opt/llama/llama-server", "test")


def table(config: Config) -> RouteTable:
    return RouteTable(config, {setting: BINARY for setting in config.bins()})


@pytest.fixture
def model_path(tmp_path: Path) -> str:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return str(path)


def test_argv_layout_base_then_owned_then_explicit(tmp_path: Path, model_path: str) -> None:
    config = make_config(
        tmp_path,
        {"m": {"path": model_path, "flags": ["-fa"]}},
        agents={"coder": {"model": "m", "flags": ["-c", "8192"]}},
        llama_server={"base_args": ["-c", "4096", "--threads", "2"]},
    )
    spec = table(config).resolve("coder")
    assert spec.argv(41000) == [
        "/opt/llama/llama-server",
        "--cache-ram", "1024",  # the supervisor's default, which any layer may override
        "--threads", "2",
        "--model", model_path,
        "--host", "127.0.0.1",
        "--port", "41000",
        "--alias", "coder",  # owned: its answers name it by the name users know
        "--metrics",  # owned: its series are merged into the daemon's /metrics
        "--ctx-size", "8192",
        "--flash-attn", "on",
    ]  # fmt: skip


def test_supervisor_defaults_give_way_to_any_flag_that_sets_them(tmp_path: Path, model_path: str) -> None:
    config = make_config(
        tmp_path,
        {"m": {"path": model_path, "flags": ["--cache-ram", "0"]}},
        agents={"fit": {"model": "m", "flags": ["--fit", "on"]}},
        pool={"prompt_cache_mib": 256},
    )
    spec = table(config).resolve("fit")
    assert spec.inherited == () and {f.name: f.values for f in spec.explicit} == {
        "--cache-ram": ("0",),
        "--fit": ("on",),
    }
    plain = make_config(tmp_path, {"m": {"path": model_path}}, pool={"prompt_cache_mib": 256})
    assert {f.name: f.values for f in table(plain).resolve("m").inherited} == {"--cache-ram": ("256",)}


def test_same_effective_flags_share_a_key_and_users_are_listed(tmp_path: Path, model_path: str) -> None:
    config = make_config(
        tmp_path,
        {"m": {"path": model_path, "flags": ["-c", "2048"], "aliases": ["mm"]}},
        agents={
            "same-as-model": {"model": "m", "flags": ["--ctx-size=2048"]},
            "bigger": {"model": "m", "flags": ["-c", "4096"]},
        },
    )
    routes = table(config)
    assert routes.key_of("m") == routes.key_of("mm") == routes.key_of("same-as-model")
    assert routes.key_of("bigger") != routes.key_of("m")
    assert sorted(routes.users(routes.key_of("m"))) == ["m", "same-as-model"]


def test_a_replaced_model_file_gets_a_new_key(tmp_path: Path, model_path: str) -> None:
    before = table(make_config(tmp_path, {"m": {"path": model_path}})).resolve("m").key
    Path(model_path).write_bytes(b"GGUF but different")
    after = table(make_config(tmp_path, {"m": {"path": model_path}})).resolve("m").key
    assert before != after


def test_unknown_name_lists_the_known_ones(tmp_path: Path, model_path: str) -> None:
    routes = table(make_config(tmp_path, {"m": {"path": model_path, "aliases": ["x"]}}))
    with pytest.raises(UnknownModelError, match="known models: m, x"):
        routes.resolve("gpt-4")


def test_where_to_enable_names_the_config_key_and_the_per_request_way_when_allowed(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    config = parse_config(
        {
            "models": {"m": {"path": str(model)}, "open": {"path": str(model), "allow_request_flags": True}},
            "agents": {"coder": {"model": "m"}},
        },
        "my.toml",
        tmp_path,
    )
    routes = RouteTable(config, {None: BINARY})
    enable = routes.where_to_enable
    assert enable("m", ["--embeddings"]) == 'Here: add "--embeddings" to the flags of models.m in my.toml'
    assert enable("coder", ["--reranking"]) == (
        'Here: add "--reranking" to the flags of agents.coder (or models.m, for every name that runs it) '
        "in my.toml"
    )
    assert enable("open", ["--pooling", "mean"]) == (
        'Here: add "--pooling mean" to the flags of models.open in my.toml, or send it per request as '
        '"llama_flags": ["--pooling", "mean"], which this model allows'
    )
    # A flag a request may not bring is only named for the config; the supervisor's own, not at all.
    assert enable("open", ["--props"]) == 'Here: add "--props" to the flags of models.open in my.toml'
    assert enable("m", ["--metrics"]) is None


def test_a_child_is_called_by_every_name_that_reaches_it_and_the_default_is_the_only_model(
    tmp_path: Path, model_path: str
) -> None:
    one = make_config(tmp_path, {"m": {"path": model_path, "aliases": ["em", "a,b"]}})
    routes = table(one)
    assert routes.default() == "m"
    spec = routes.resolve(None)
    assert spec.names == ("m", "em", "a,b")  # the same child
    argv = spec.argv(41000)
    assert argv[argv.index("--alias") + 1] == "m,em"  # llama.cpp splits the list on commas
    two = make_config(
        tmp_path, {"m": {"path": model_path}}, agents={"coder": {"model": "m", "flags": ["-c", "512"]}}
    )
    with pytest.raises(
        MissingModelError, match=r"names no model .*: coder, m\), or set server.default_model"
    ):
        table(two).resolve(None)
    chosen = make_config(
        tmp_path, {"m": {"path": model_path}}, server={"default_model": "m"}, agents={"coder": {"model": "m"}}
    )
    assert table(chosen).resolve(None).model == "m"
    # Names that share a child share its aliases; a per-request spec is called by the name asked.
    assert table(chosen).resolve("coder").names == ("m", "coder")
    allowing = make_config(tmp_path, {"m": {"path": model_path, "allow_request_flags": True}})
    assert table(allowing).resolve("m", ["-c", "1024"]).names == ("m",)
