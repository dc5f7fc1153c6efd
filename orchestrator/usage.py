"""Token counts of one answer, read from what llama-server itself sent: pure.

A JSON answer carries ``usage`` (the OpenAI figures) and ``timings``
(llama-server's: ``prompt_n`` tokens evaluated, ``cache_n`` reused,
``predicted_n`` generated, ``predicted_per_second``). A stream sends
``timings`` in its last event before ``[DONE]``, and ``usage`` too when the
request asked for it (``stream_options.include_usage``). ``usage`` wins where
both are given; without it the prompt is what was evaluated plus what came
from the cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_DATA = b"data:"


@dataclass(frozen=True)
class TokenCounts:
    prompt: int | None = None
    generated: int | None = None
    generation_per_s: float | None = None  # llama-server's own rate (excludes the prompt)


NO_COUNTS = TokenCounts()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _table(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    return value if isinstance(value, dict) else {}


def _usage_of(document: dict[str, Any]) -> dict[str, Any]:
    """The ``usage`` of an answer, or of the message (Anthropic's ``message_start``) or response
    (the Responses API's ``response.completed``) a stream event carries."""
    for holder in (document, _table(document, "message"), _table(document, "response")):
        if usage := _table(holder, "usage"):
            return usage
    return {}


def counts_of(document: Any) -> TokenCounts:
    """The counts in one answer or stream event (a parsed JSON object); NO_COUNTS when it has none.

    ``usage`` in the OpenAI shape (``prompt_tokens``, ``completion_tokens``), or in Anthropic's and
    the Responses API's (``input_tokens``, plus Anthropic's cache reads and writes, and
    ``output_tokens``); else llama-server's ``timings``.
    """
    if not isinstance(document, dict):
        return NO_COUNTS
    usage, timings = _usage_of(document), _table(document, "timings")
    prompt = _number(usage.get("prompt_tokens"))
    if prompt is None and (given := _number(usage.get("input_tokens"))) is not None:
        cached = ("cache_read_input_tokens", "cache_creation_input_tokens")
        prompt = given + sum(_number(usage.get(name)) or 0 for name in cached)
    if prompt is None and (evaluated := _number(timings.get("prompt_n"))) is not None:
        prompt = evaluated + (_number(timings.get("cache_n")) or 0)
    generated = _number(usage.get("completion_tokens"))
    if generated is None:
        generated = _number(usage.get("output_tokens"))
    if generated is None:
        generated = _number(timings.get("predicted_n"))
    rate = _number(timings.get("predicted_per_second"))
    return TokenCounts(
        None if prompt is None else int(prompt), None if generated is None else int(generated), rate
    )


def counts_in_json(body: bytes) -> TokenCounts:
    """The counts of a whole JSON answer (chat, completion or embeddings)."""
    try:
        return counts_of(json.loads(body))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return NO_COUNTS  # not JSON after all: nothing to count


def counts_in_stream_tail(tail: bytes) -> TokenCounts:
    """The counts in the last events of an SSE stream (``tail``: its final bytes, after its first ones,
    where Anthropic's ``message_start`` says the prompt's size).

    The events are read from the end; the last one with counts wins, merged
    with an earlier one for what it lacks (llama-server may send ``usage`` in
    an event of its own after the one with ``timings``).
    """
    found = NO_COUNTS
    for line in reversed(tail.split(b"\n")):
        if not line.startswith(_DATA):
            continue
        payload = line[len(_DATA) :].strip()
        if not payload.startswith(b"{"):
            continue  # [DONE], or a line cut by the start of the tail
        counts = counts_in_json(payload)
        found = TokenCounts(
            found.prompt if found.prompt is not None else counts.prompt,
            found.generated if found.generated is not None else counts.generated,
            found.generation_per_s if found.generation_per_s is not None else counts.generation_per_s,
        )
        if None not in (found.prompt, found.generated, found.generation_per_s):
            break
    return found
