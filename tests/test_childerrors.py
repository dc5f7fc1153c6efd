"""A child's "start it with --x" errors, in our terms (pure: the message in, the message out)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from orchestrator import childerrors

EMBEDDINGS = "This server does not support embeddings. Start it with `--embeddings`"
RERANK = "This server does not support reranking. Start it with `--reranking`"
POOLING = "Pooling type 'none' is not OAI compatible. Please use a different pooling type"
INFILL = "Infill is not supported by this model: prefix token is missing. "


def where(flags: Sequence[str]) -> str | None:
    return None if "--metrics" in flags else f"Here: add {' '.join(flags)} to models.m"


def body(message: str, **extra: object) -> bytes:
    error = {"code": 501, "message": message, "type": "not_supported_error"}
    return json.dumps({"error": error, **extra}).encode()


@pytest.mark.parametrize(
    ("message", "flags"),
    [(EMBEDDINGS, ("--embeddings",)), (RERANK, ("--reranking",)), (POOLING, ("--pooling", "mean")),
     ("This server does not support slots endpoint. Start it with `--slots`", ("--slots",)),
     ("Invalid request: 'messages' is required", None)],
)  # fmt: skip
def test_the_flags_a_message_asks_for(message: str, flags: tuple[str, ...] | None) -> None:
    assert childerrors.enabling_flags(message) == flags


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (501, EMBEDDINGS, EMBEDDINGS + ". Here: add --embeddings to models.m."),
        (501, RERANK, RERANK + ". Here: add --reranking to models.m."),
        (400, POOLING, POOLING + ". Here: add --pooling mean to models.m."),
        (501, INFILL, INFILL.strip().rstrip(".") + ". " + childerrors._NO_FIM_HINT + "."),
    ],
)
def test_the_message_keeps_llama_servers_words_and_adds_where_to_enable_it(
    status: int, message: str, expected: str
) -> None:
    explained = childerrors.explain(status, body(message, extra="kept"), where)
    assert explained is not None
    document = json.loads(explained)
    assert document["error"] == {"code": 501, "message": expected, "type": "not_supported_error"}
    assert document["extra"] == "kept"


@pytest.mark.parametrize(
    ("status", "raw"),
    [
        (200, body(EMBEDDINGS)),  # not an error
        (500, body(EMBEDDINGS)),  # not what a missing capability is answered with
        (501, body("This server does not support metrics endpoint. Start it with `--metrics`")),  # ours
        (400, body("Invalid request")),  # nothing to add
        (501, b"not json"),
        (501, b'["a list"]'),
        (501, b'{"error": "a string"}'),
        (501, json.dumps({"error": {"message": 5}}).encode()),
        (501, body(EMBEDDINGS + " " * childerrors.MAX_BYTES)),  # too large to be one of these
    ],
)
def test_everything_else_passes_untouched(status: int, raw: bytes) -> None:
    assert childerrors.explain(status, raw, where) is None
