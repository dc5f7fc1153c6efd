"""Token counts read from llama-server's own answers (shapes as the real binary sends them)."""

from __future__ import annotations

import json

import pytest

from orchestrator.usage import NO_COUNTS, TokenCounts, counts_in_json, counts_in_stream_tail

TIMINGS = {"cache_n": 30, "prompt_n": 1, "predicted_n": 5, "predicted_per_second": 59.8}
USAGE = {"completion_tokens": 5, "prompt_tokens": 31, "total_tokens": 36}


def event(document: object) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": USAGE, "timings": TIMINGS}, TokenCounts(31, 5, 59.8)),  # usage wins
        ({"timings": TIMINGS}, TokenCounts(31, 5, 59.8)),  # prompt = evaluated + cached
        ({"usage": {"prompt_tokens": 7, "total_tokens": 7}}, TokenCounts(7, None, None)),  # embeddings
        ({"usage": {"prompt_tokens": "7"}}, NO_COUNTS),  # not a number
        ({"usage": {"prompt_tokens": True}}, NO_COUNTS),
        ([1, 2], NO_COUNTS),
        ({}, NO_COUNTS),
    ],
)
def test_counts_in_a_json_answer(body: object, expected: TokenCounts) -> None:
    assert counts_in_json(json.dumps(body).encode()) == expected


def test_a_body_that_is_not_json_has_no_counts() -> None:
    assert counts_in_json(b"\xff{") == NO_COUNTS
    assert counts_in_json(b"[" * 100_000) == NO_COUNTS


def test_a_stream_counts_from_its_final_events() -> None:
    delta = event({"choices": [{"delta": {"content": "hi"}}]})
    final = event({"choices": [{"delta": {}, "finish_reason": "length"}], "timings": TIMINGS})
    assert counts_in_stream_tail(delta * 3 + final + b"data: [DONE]\n\n") == TokenCounts(31, 5, 59.8)
    # stream_options.include_usage: one more event, with usage and timings of its own
    with_usage = event({"choices": [], "usage": {**USAGE, "prompt_tokens": 40}, "timings": TIMINGS})
    assert counts_in_stream_tail(delta + final + with_usage + b"data: [DONE]\n\n") == TokenCounts(40, 5, 59.8)


def test_a_tail_that_starts_inside_an_event_skips_the_cut_part() -> None:
    final = event({"timings": TIMINGS})
    assert counts_in_stream_tail(b'nt": "hi"}}]}\n\n' + final + b"data: [DONE]\n\n") == TokenCounts(
        31, 5, 59.8
    )
    assert counts_in_stream_tail(b"data: [DONE]\n\n") == NO_COUNTS
    assert counts_in_stream_tail(b"") == NO_COUNTS


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Anthropic Messages (the real binary's: the cached part of the prompt apart)
        ({"usage": {"cache_read_input_tokens": 30, "input_tokens": 1, "output_tokens": 3}},
         TokenCounts(31, 3)),
        ({"usage": {"input_tokens": 7}}, TokenCounts(7, None)),  # /v1/messages/count_tokens
        # the Responses API
        ({"object": "response", "usage": {"input_tokens": 12, "output_tokens": 4, "total_tokens": 16}},
         TokenCounts(12, 4)),
    ],
)  # fmt: skip
def test_counts_in_anthropic_and_responses_answers(body: object, expected: TokenCounts) -> None:
    assert counts_in_json(json.dumps(body).encode()) == expected


def test_an_anthropic_stream_counts_its_prompt_at_message_start_and_output_at_message_delta() -> None:
    usage = {"cache_read_input_tokens": 30, "input_tokens": 1, "output_tokens": 0}
    start = {"type": "message_start", "message": {"usage": usage}}
    delta = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}
    ending = {"type": "message_delta", "usage": {"output_tokens": 9}}
    stream = b"".join(
        b"event: " + name + b"\n" + event(data)
        for name, data in ((b"message_start", start), (b"content_block_delta", delta),
                           (b"message_delta", ending), (b"message_stop", {"type": "message_stop"}))
    )  # fmt: skip
    assert counts_in_stream_tail(stream) == TokenCounts(31, 9)


def test_a_responses_stream_counts_from_response_completed() -> None:
    done = {"type": "response.completed", "response": {"usage": {"input_tokens": 12, "output_tokens": 4}}}
    stream = event({"type": "response.output_text.delta", "delta": "hi"}) + event(done)
    assert counts_in_stream_tail(stream) == TokenCounts(12, 4)
