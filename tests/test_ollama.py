"""Ollama's API onto llama-server's and back, by table: requests, answers, streams, errors."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from orchestrator.ollama import (
    CHAT_PATH,
    COMPLETION_PATH,
    EMBEDDINGS_PATH,
    OllamaRequestError,
    StreamTranslator,
    Timing,
    chat_answer,
    chat_request,
    created_at,
    embed_answer,
    embed_request,
    error_answer,
    generate_request,
    keep_alive_seconds,
)

PNG = "iVBORw0KGgoAAAANSUhEUg"
TIMING = Timing("coder", started=1000.0, load_s=0.5)


@pytest.mark.parametrize(
    ("options", "allowed", "params", "flags", "ignored"),
    [
        (
            {"temperature": 0.2, "top_k": 5, "seed": 7, "stop": ["\n"]},
            True,
            {"temperature": 0.2, "top_k": 5, "seed": 7, "stop": ["\n"]},
            (),
            (),
        ),
        (
            {"num_predict": 16, "repeat_penalty": 1.1, "min_p": 0.05},
            False,
            {"max_tokens": 16, "repeat_penalty": 1.1, "min_p": 0.05},
            (),
            (),
        ),
        (
            {"num_ctx": 8192, "num_thread": 2, "use_mmap": False},
            True,
            {},
            ("--ctx-size", "8192", "--threads", "2", "--no-mmap"),
            (),
        ),
        ({"num_ctx": 8192}, False, {}, (), ("num_ctx",)),
        ({"penalize_newline": True}, True, {}, (), ("penalize_newline",)),
    ],
)
def test_chat_options_become_parameters_or_flags(
    options: dict[str, Any],
    allowed: bool,
    params: dict[str, Any],
    flags: tuple[str, ...],
    ignored: tuple[str, ...],
) -> None:
    translated = chat_request({"model": "coder", "messages": [], "options": options}, flags_allowed=allowed)
    assert translated.path == CHAT_PATH and translated.stream  # Ollama streams unless told not to
    assert {k: v for k, v in translated.body.items() if k not in ("model", "messages", "stream")} == params
    assert translated.flags == flags
    assert tuple(note.split()[0] for note in translated.ignored) == ignored


def test_chat_messages_images_tools_format_and_think() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    body = {
        "model": "coder",
        "stream": False,
        "format": schema,
        "think": True,
        "tools": tools,
        "messages": [
            {"role": "System", "content": "be brief"},
            {"role": "user", "content": "what is this?", "images": [PNG, "/9j/4AAQ"]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
            },
            {"role": "tool", "content": "-3 C", "tool_name": "weather"},
        ],
    }
    translated = chat_request(body, flags_allowed=False).body
    assert translated["stream"] is False and translated["tools"] == tools
    assert translated["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert translated["chat_template_kwargs"] == {"enable_thinking": True}
    system, user, assistant, tool = translated["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    assert assistant["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert tool == {"role": "tool", "content": "-3 C", "tool_call_id": "weather"}
    assert chat_request({"messages": [], "format": "json"}, flags_allowed=False).body["response_format"] == {
        "type": "json_object"
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": "hi"}, "messages must be a list"),
        ({"messages": [{"content": "no role"}]}, 'with a "role"'),
        ({"messages": [], "format": "yaml"}, 'format must be "json" or a JSON schema'),
        ({"messages": [], "options": [1]}, "options must be an object"),
        ({"messages": [{"role": "user", "content": "x", "images": [3]}]}, "base64-encoded images"),
    ],
)
def test_bad_chat_requests_say_what_is_expected(body: dict[str, Any], message: str) -> None:
    with pytest.raises(OllamaRequestError, match=re.escape(message)):
        chat_request(body, flags_allowed=False)


def test_generate_is_a_chat_with_its_system_and_raw_is_a_completion() -> None:
    chat = generate_request(
        {"model": "m", "prompt": "hi", "system": "sys", "options": {"num_predict": 3}}, flags_allowed=False
    )
    assert chat.path == CHAT_PATH and chat.body["max_tokens"] == 3
    assert chat.body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    raw = generate_request(
        {"model": "m", "prompt": "<s>hi", "raw": True, "stream": False, "options": {"num_predict": 3}},
        flags_allowed=False,
    )
    assert raw.path == COMPLETION_PATH and not raw.stream
    assert raw.body == {"model": "m", "prompt": "<s>hi", "n_predict": 3, "stream": False}


def test_embed_requests() -> None:
    assert embed_request({"model": "e", "input": ["a", "b"]}, legacy=False).body == {
        "model": "e",
        "input": ["a", "b"],
    }
    legacy = embed_request({"model": "e", "prompt": "a"}, legacy=True)
    assert legacy.path == EMBEDDINGS_PATH and legacy.body["input"] == "a"
    with pytest.raises(OllamaRequestError, match="input must be a string or a list of strings"):
        embed_request({"model": "e", "input": 3}, legacy=False)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("250ms", 0.25),
        (0, 0.0),
        ("0", 0.0),
        (30, 30.0),
        (-1, math.inf),
        ("-1m", math.inf),
        ("2.5h", 9000.0),
    ],
)
def test_keep_alive(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m5", True, [1]])
def test_a_bad_keep_alive_is_refused(value: Any) -> None:
    with pytest.raises(OllamaRequestError, match="keep_alive"):
        keep_alive_seconds(value)


def test_a_chat_answer_with_thinking_and_tool_calls_and_figures_in_nanoseconds() -> None:
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 99, "completion_tokens": 99},
        "timings": {"prompt_n": 12, "prompt_ms": 30.5, "predicted_n": 7, "predicted_ms": 70.25},
    }
    document = chat_answer(answer, TIMING, generate=False, now=1002.0)
    assert document["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": "hmm",
        "tool_calls": [
            {"id": "c1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Oslo"}}}
        ],
    }
    assert document["done"] is True and document["done_reason"] == "stop"
    assert (document["prompt_eval_count"], document["eval_count"]) == (12, 7)  # the child's timings first
    assert document["prompt_eval_duration"] == 30_500_000 and document["eval_duration"] == 70_250_000
    assert document["total_duration"] == 2_000_000_000 and document["load_duration"] == 500_000_000
    generated = chat_answer(
        {
            "choices": [{"finish_reason": "length", "message": {"content": "abc"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        },
        TIMING,
        generate=True,
        now=1001.0,
    )
    assert generated["response"] == "abc" and generated["done_reason"] == "length"
    assert (generated["prompt_eval_count"], generated["eval_count"]) == (3, 2)  # from the usage


def test_a_raw_completion_answer() -> None:
    document = chat_answer(
        {"content": "xyz", "stop_type": "limit", "timings": {"predicted_n": 3}},
        TIMING,
        generate=True,
        now=1001.0,
    )
    assert (document["response"], document["done_reason"], document["eval_count"]) == ("xyz", "length", 3)


def test_embed_answers() -> None:
    answer = {
        "data": [{"index": 1, "embedding": [0.3]}, {"index": 0, "embedding": [0.1]}],
        "usage": {"prompt_tokens": 4},
    }
    assert embed_answer(answer, TIMING, legacy=False, now=1001.0)["embeddings"] == [[0.1], [0.3]]
    assert embed_answer(answer, TIMING, legacy=False, now=1001.0)["prompt_eval_count"] == 4
    assert embed_answer(answer, TIMING, legacy=True, now=1001.0) == {"embedding": [0.1]}


def sse(*chunks: Any) -> bytes:
    return b"".join(
        b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks
    )


def test_a_chat_stream_becomes_ndjson_with_tool_calls_gathered_and_a_final_object() -> None:
    translator = StreamTranslator(TIMING, generate=False)
    stream = sse(
        {"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"delta": {"reasoning_content": "think"}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "function": {"name": "wea", "arguments": '{"ci'}}
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"name": "ther", "arguments": 'ty":"Oslo"}'}}]
                    }
                }
            ]
        },
        {
            "choices": [{"delta": {}, "finish_reason": "tool_calls"}],
            "timings": {"prompt_n": 5, "predicted_n": 4, "predicted_ms": 8},
        },
        b"[DONE]",
    )
    # Fed in pieces that cut events anywhere: only whole events come out.
    lines = [
        line for cut in range(0, len(stream), 7) for line in translator.feed(stream[cut : cut + 7], 1001.0)
    ]
    documents = [json.loads(line) for line in lines]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert [d["message"].get("content") for d in documents] == ["Hel", "", "", ""]
    assert documents[1]["message"]["thinking"] == "think"
    assert documents[2]["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Oslo"}}}
    ]
    final = documents[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and not documents[0]["done"]
    assert (final["prompt_eval_count"], final["eval_count"], final["eval_duration"]) == (5, 4, 8_000_000)
    assert translator.feed(sse(b"[DONE]"), 1001.0) == []  # nothing after the end


def test_a_raw_completion_stream_and_an_error_event() -> None:
    raw = StreamTranslator(TIMING, generate=True, raw=True)
    lines = raw.feed(
        sse(
            {"content": "a", "stop": False},
            {"content": "b", "stop": True, "stop_type": "eos", "timings": {"predicted_n": 2}},
        ),
        1001.0,
    )
    documents = [json.loads(line) for line in lines]
    assert [d["response"] for d in documents] == ["a", "b", ""] and documents[-1]["eval_count"] == 2
    failing = StreamTranslator(TIMING, generate=False)
    [line] = failing.feed(
        sse({"error": {"code": 500, "message": "the child died", "type": "server_error"}}), 1.0
    )
    assert json.loads(line) == {"error": "the child died"} and failing.finished


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"message": "no such model", "type": "x", "code": "model_not_found"}}', "no such model"),
        (b'{"error": "plain"}', "plain"),
        (b"Bad Gateway", "Bad Gateway"),
    ],
)
def test_errors_in_ollamas_shape(body: bytes, expected: str) -> None:
    assert error_answer(body) == {"error": expected}


def test_timestamps_are_rfc3339_with_nanoseconds() -> None:
    assert created_at(1_700_000_000.25) == "2023-11-14T22:13:20.250000000Z"
