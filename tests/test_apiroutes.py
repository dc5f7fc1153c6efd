"""The table of llama-server routes: where a request names its model, which keys open it, and
which /upstream paths stay inside their child (pure)."""

from __future__ import annotations

import json

import pytest

from orchestrator import apiroutes
from orchestrator.apiroutes import ModelIn


def test_the_table_has_llama_servers_routes_and_spellings() -> None:
    chat = apiroutes.find("POST", "/v1/chat/completions", False)
    assert chat is not None and chat.model_in is ModelIn.BODY and chat.shows_loading
    assert apiroutes.find("POST", "/chat/completions", False) == apiroutes.ApiRoute(
        "POST", "/chat/completions", ModelIn.BODY, shows_loading=True
    )
    for path in ("/v1/rerank", "/rerank", "/reranking", "/v1/reranking", "/completion", "/v1/messages"):
        found = apiroutes.find("POST", path, False)
        assert found is not None and found.model_in is ModelIn.BODY and not found.shows_loading, path
    transcription = apiroutes.find("POST", "/v1/audio/transcriptions", False)
    assert transcription is not None and transcription.model_in is ModelIn.FORM
    props = apiroutes.find("GET", "/props", False)
    assert props is not None and props.model_in is ModelIn.QUERY and props.hides_paths
    assert apiroutes.find("GET", "/v1/chat/completions", False) is None  # the method matters
    assert apiroutes.find("POST", "/v1/models", False) is None  # ours, not a child's


def test_metrics_is_a_childs_only_when_it_is_named() -> None:
    assert apiroutes.find("GET", "/metrics", False) is None  # the daemon's own
    named = apiroutes.find("GET", "/metrics", True)
    assert named is not None and named.model_in is ModelIn.QUERY


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat/completions", True), ("/completion", True), ("/tokenize", True), ("/props", True),
        ("/v1/models", True), ("/models", True), ("/models/load", True), ("/v1/anything", True),
        ("/slots", False), ("/metrics", False), ("/slots/0", False), ("/upstream/m/health", False),
        ("/api/sidecars", False), ("/ws/events", False),
    ],
)  # fmt: skip
def test_which_paths_the_api_keys_open(path: str, api: bool) -> None:
    assert apiroutes.needs_api_key(path) is api


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/upstream/m/health", "", ("m", "/health")),
        ("/upstream/m/", "", ("m", "/")),
        ("/upstream/m", "", ("m", "/")),
        ("/upstream/coder/v2/new/thing", "a=1&b=2", ("coder", "/v2/new/thing?a=1&b=2")),
        ("/upstream/m/a..b/c", "", ("m", "/a..b/c")),  # dots inside a name are fine
        ("/upstream/../api/config", "", None),
        ("/upstream/m/../../etc/passwd", "", None),
        ("/upstream/m/a/./b", "", None),
        ("/upstream/m/a/..", "", None),
        ("/upstream//health", "", None),
        ("/upstream/", "", None),
        ("/upstream/m/a//b", "", None),
        ("/upstream/m/a\\b", "", None),
        ("/upstream/m/a\x00b", "", None),
        ("/api/config", "", None),
    ],
)
def test_an_upstream_path_cannot_leave_its_child(
    path: str, query: str, expected: tuple[str, str] | None
) -> None:
    assert apiroutes.upstream_target(path, query) == expected


def test_props_say_the_public_name_never_the_model_files_path() -> None:
    props = {"total_slots": 1, "model_path": "/srv/models/secret/q.gguf", "model_alias": "coder"}
    shown = apiroutes.hide_model_path(json.dumps(props).encode(), "coder")
    assert shown is not None and json.loads(shown) == {**props, "model_path": "coder"}
    assert apiroutes.hide_model_path(b'{"total_slots": 1}', "coder") is None
    assert apiroutes.hide_model_path(b"not json", "coder") is None
    assert apiroutes.hide_model_path(b"[1]", "coder") is None
