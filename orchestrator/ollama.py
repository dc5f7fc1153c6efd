"""Ollama's API translated onto llama-server's: requests one way, answers and streams the other. Pure.

An Ollama chat or generate request becomes an OpenAI chat request to the
child (``/v1/chat/completions``; a raw generate, llama.cpp's ``/completion``),
its ``options`` llama-server's sampling parameters, its load-time options
per-request flags where the model allows them; the child's JSON answer or SSE
stream becomes Ollama's JSON or newline-delimited JSON, with counts and
durations (nanoseconds) from llama-server's ``timings``. Shapes as in Ollama's
``api/types.go`` and ``docs/api.md``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/completion"
EMBEDDINGS_PATH = "/v1/embeddings"

# Ollama's sampling options that llama-server takes under the same name, and those renamed; also
# llama.cpp's own samplers, which Ollama lacks, passed as they are (DRY, XTC, ignore_eos, ...).
_SAME_OPTIONS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "typical_p", "seed", "stop", "repeat_penalty",
    "repeat_last_n", "presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau", "mirostat_eta",
    "ignore_eos", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
    "xtc_probability", "xtc_threshold", "top_n_sigma", "dynatemp_range", "dynatemp_exponent", "n_probs",
    "samplers",
})  # fmt: skip
_RENAMED_OPTIONS = {"num_predict": "n_predict", "num_keep": "n_keep"}
# Load-time options: per-request flags (they give the model a child of their own).
_FLAG_OPTIONS = {
    "num_ctx": "--ctx-size", "num_batch": "--batch-size", "num_gpu": "--n-gpu-layers",
    "main_gpu": "--main-gpu", "num_thread": "--threads",
}  # fmt: skip
_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}
_IMAGE_TYPES = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}


class OllamaRequestError(ValueError):
    """An Ollama request we cannot translate; its message says what was wrong and what is expected."""


@dataclass(frozen=True)
class Translated:
    """An Ollama request as the child gets it."""

    path: str
    body: dict[str, Any]
    flags: tuple[str, ...] = ()  # per-request flags from load-time options
    ignored: tuple[str, ...] = ()  # options the model cannot honour here, for the log
    stream: bool = False


@dataclass(frozen=True)
class Options:
    params: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def translate_options(options: Any, *, flags_allowed: bool) -> Options:
    """``options`` as llama-server's request parameters, and flags for the load-time ones."""
    if options is None:
        return Options()
    if not isinstance(options, dict):
        raise OllamaRequestError(f'options must be an object such as {{"temperature": 0.2}}, got {options!r}')
    params: dict[str, Any] = {}
    flags: list[str] = []
    ignored: list[str] = []
    for name, value in options.items():
        if name in _SAME_OPTIONS:
            params[name] = value
        elif name in _RENAMED_OPTIONS:
            params[_RENAMED_OPTIONS[name]] = value
        elif name in _FLAG_OPTIONS or name == "use_mmap":
            if not flags_allowed:
                ignored.append(f"{name} (a load-time option; this model does not allow per-request flags)")
            elif name == "use_mmap":
                flags += [] if value else ["--no-mmap"]
            else:
                flags += [_FLAG_OPTIONS[name], str(value)]
        else:
            ignored.append(f"{name} (not a llama-server parameter)")
    return Options(params, tuple(flags), tuple(ignored))


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive`` in seconds: None when not given, 0 to stop once idle, inf to keep.

    A number is seconds; a string is a Go duration ("5m", "1h30m", "10s", "-1m"); any negative
    value keeps the model until it is evicted for room.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise OllamaRequestError(f'keep_alive must be a duration ("5m") or seconds, got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _go_duration(value.strip())
    else:
        raise OllamaRequestError(f'keep_alive must be a duration ("5m") or seconds, got {value!r}')
    return math.inf if seconds < 0 else seconds


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if re.fullmatch(r"\d+(\.\d+)?", body):
        return sign * float(body)  # Ollama reads a bare number as seconds
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise OllamaRequestError(f'keep_alive {text!r} is not a duration such as "5m", "1h30m" or "-1"')
    return sign * sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def _format(value: Any) -> dict[str, Any] | None:
    if value in (None, ""):
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise OllamaRequestError(f'format must be "json" or a JSON schema object, got {value!r}')


def _image_part(data: Any) -> dict[str, Any]:
    if not isinstance(data, str) or not data:
        raise OllamaRequestError("images must be a list of base64-encoded images")
    mime = next((kind for magic, kind in _IMAGE_TYPES.items() if data.startswith(magic)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _tool_calls_to_openai(calls: Any) -> list[dict[str, Any]]:
    converted = []
    for index, call in enumerate(calls or []):
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        converted.append({
            "id": call.get("id") or f"call_{index}",
            "type": "function",
            "function": {
                "name": function.get("name", ""),
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            },
        })  # fmt: skip
    return converted


def _message_to_openai(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise OllamaRequestError('each message must be an object with a "role" and "content"')
    role = message["role"].lower()
    content = message.get("content") or ""
    converted: dict[str, Any] = {"role": role}
    images = message.get("images") or []
    converted["content"] = (
        [{"type": "text", "text": content}, *(_image_part(image) for image in images)] if images else content
    )
    if message.get("tool_calls"):
        converted["tool_calls"] = _tool_calls_to_openai(message["tool_calls"])
    if role == "tool":
        converted["tool_call_id"] = message.get("tool_call_id") or message.get("tool_name") or "call_0"
    if message.get("thinking") and role == "assistant":
        converted["reasoning_content"] = message["thinking"]
    return converted


def _common(body: Mapping[str, Any], options: Options) -> dict[str, Any]:
    translated: dict[str, Any] = {"model": body.get("model")}
    fmt = _format(body.get("format"))
    if fmt is not None:
        translated["response_format"] = fmt
    think = body.get("think")
    if isinstance(think, bool):
        translated["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str):
        translated["reasoning_effort"] = think
    translated.update(options.params)
    if "n_predict" in translated:
        translated["max_tokens"] = translated.pop("n_predict")
    return translated


def _stream(body: Mapping[str, Any]) -> bool:
    return body.get("stream") is not False  # Ollama streams unless told not to


def chat_request(body: Mapping[str, Any], *, flags_allowed: bool) -> Translated:
    """``POST /api/chat`` as an OpenAI chat request."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise OllamaRequestError('messages must be a list such as [{"role": "user", "content": "Hi"}]')
    options = translate_options(body.get("options"), flags_allowed=flags_allowed)
    translated = _common(body, options)
    translated["messages"] = [_message_to_openai(message) for message in messages]
    if body.get("tools"):
        translated["tools"] = body["tools"]
    stream = _stream(body)
    translated["stream"] = stream
    return Translated(CHAT_PATH, translated, options.flags, options.ignored, stream)


def generate_request(body: Mapping[str, Any], *, flags_allowed: bool) -> Translated:
    """``POST /api/generate``: the prompt (and system) as a chat, or with ``raw`` as a completion."""
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise OllamaRequestError("prompt must be a string")
    options = translate_options(body.get("options"), flags_allowed=flags_allowed)
    stream = _stream(body)
    translated = _common(body, options)
    translated["stream"] = stream
    if body.get("raw"):
        if "max_tokens" in translated:
            translated["n_predict"] = translated.pop("max_tokens")
        translated["prompt"] = prompt
        if translated.pop("response_format", None) is not None and body.get("format") == "json":
            translated["json_schema"] = {}
        return Translated(COMPLETION_PATH, translated, options.flags, options.ignored, stream)
    system = body.get("system")
    user: dict[str, Any] = {"role": "user", "content": prompt}
    if body.get("images"):
        user["images"] = body["images"]
    messages = [*([{"role": "system", "content": system}] if system else []), user]
    translated["messages"] = [_message_to_openai(message) for message in messages]
    return Translated(CHAT_PATH, translated, options.flags, options.ignored, stream)


def embed_request(body: Mapping[str, Any], *, legacy: bool) -> Translated:
    """``POST /api/embed`` (``input``: a string or a list) or the older ``/api/embeddings`` (``prompt``)."""
    text = body.get("prompt") if legacy else body.get("input")
    if legacy and not isinstance(text, str):
        raise OllamaRequestError("prompt must be the string to embed")
    if not legacy and not (
        isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))
    ):
        raise OllamaRequestError("input must be a string or a list of strings")
    translated: dict[str, Any] = {"model": body.get("model"), "input": text}
    if body.get("dimensions"):
        translated["dimensions"] = body["dimensions"]
    return Translated(EMBEDDINGS_PATH, translated)


# -- answers ----------------------------------------------------------------------------


def created_at(now: float) -> str:
    """Ollama's timestamps: RFC 3339 in UTC with nanoseconds."""
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1e9):09d}Z"


def metrics(timings: Mapping[str, Any] | None, usage: Mapping[str, Any] | None, total_s: float,
            load_s: float) -> dict[str, int]:  # fmt: skip
    """Ollama's counts and durations (ns) from llama-server's ``timings`` (else the ``usage``)."""
    timings = timings or {}
    usage = usage or {}
    found = {
        "total_duration": int(total_s * 1e9),
        "load_duration": int(load_s * 1e9),
        "prompt_eval_count": int(timings.get("prompt_n", usage.get("prompt_tokens", 0)) or 0),
        "prompt_eval_duration": int(float(timings.get("prompt_ms", 0) or 0) * 1e6),
        "eval_count": int(timings.get("predicted_n", usage.get("completion_tokens", 0)) or 0),
        "eval_duration": int(float(timings.get("predicted_ms", 0) or 0) * 1e6),
    }
    return found


def _tool_calls_from_openai(calls: Any) -> list[dict[str, Any]]:
    converted = []
    for index, call in enumerate(calls or []):
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = {"arguments": arguments}  # not JSON: kept as the model wrote it
        entry: dict[str, Any] = {
            "function": {"index": index, "name": function.get("name", ""), "arguments": parsed}
        }
        if call.get("id"):
            entry["id"] = call["id"]
        converted.append(entry)
    return converted


def _answer_piece(model: str, now: float, content: str, thinking: str, calls: list[dict[str, Any]], *,
                  generate: bool) -> dict[str, Any]:  # fmt: skip
    """An answer or a piece of one: generate's ``response`` (and ``thinking``, ``tool_calls``) at the
    top level, chat's in its ``message``."""
    reply: dict[str, Any] = {"content": content} if not generate else {"response": content}
    if thinking:
        reply["thinking"] = thinking
    if calls:
        reply["tool_calls"] = calls
    if generate:
        return {"model": model, "created_at": created_at(now), **reply}
    return {"model": model, "created_at": created_at(now), "message": {"role": "assistant", **reply}}


@dataclass(frozen=True)
class Timing:
    """What the answer's metrics need besides the child's own timings."""

    model: str
    started: float  # wall clock
    load_s: float = 0.0


def chat_answer(answer: Mapping[str, Any], timing: Timing, *, generate: bool, now: float) -> dict[str, Any]:
    """A whole OpenAI chat answer (or llama.cpp's /completion one) as Ollama's."""
    if "choices" in answer:
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        thinking = message.get("reasoning_content") or ""
        calls = _tool_calls_from_openai(message.get("tool_calls"))
        reason = _DONE_REASONS.get(choice.get("finish_reason") or "stop", "stop")
    else:  # /completion (a raw generate)
        content, thinking, calls = answer.get("content", ""), "", []
        reason = "length" if answer.get("stop_type") == "limit" or answer.get("truncated") else "stop"
    document = _answer_piece(timing.model, now, content, thinking, calls, generate=generate)
    document.update({"done": True, "done_reason": reason})
    document.update(metrics(answer.get("timings"), answer.get("usage"), now - timing.started, timing.load_s))
    return document


def embed_answer(answer: Mapping[str, Any], timing: Timing, *, legacy: bool, now: float) -> dict[str, Any]:
    vectors = [
        item.get("embedding", []) for item in sorted(answer.get("data", []), key=lambda d: d.get("index", 0))
    ]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage") or {}
    return {
        "model": timing.model,
        "embeddings": vectors,
        "total_duration": int((now - timing.started) * 1e9),
        "load_duration": int(timing.load_s * 1e9),
        "prompt_eval_count": int(usage.get("prompt_tokens", 0) or 0),
    }


def error_answer(body: bytes) -> dict[str, str]:
    """Our or the child's error (OpenAI's shape, llama.cpp's, or text) in Ollama's ``{"error": ...}``."""
    try:
        document = json.loads(body)
    except ValueError:
        return {"error": body.decode("utf-8", "replace").strip() or "error"}
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        return {"error": str(error.get("message") or error)}
    if isinstance(error, str):
        return {"error": error}
    return {"error": json.dumps(document)}


class StreamTranslator:
    """The child's SSE stream, fed as it comes, as Ollama's newline-delimited JSON."""

    def __init__(self, timing: Timing, *, generate: bool, raw: bool = False) -> None:
        self._timing = timing
        self._generate = generate
        self._raw = raw  # llama.cpp's /completion events rather than OpenAI chunks
        self._pending = b""
        self._calls: dict[int, dict[str, Any]] = {}
        self._reason = "stop"
        self._timings: dict[str, Any] | None = None
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """NDJSON lines for the events completed by ``data``."""
        self._pending += data
        lines = []
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            lines += self._event(line.strip(), now)
        return lines

    def _event(self, line: bytes, now: float) -> list[bytes]:
        if not line.startswith(b"data:") or self.finished:
            return []
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return self._finish(now)
        try:
            chunk = json.loads(payload)
        except ValueError:
            return []
        if "error" in chunk:
            self.finished = True
            return [_line(error_answer(payload))]
        self._timings = chunk.get("timings") or self._timings
        self._usage = chunk.get("usage") or self._usage
        if self._raw:
            out = self._piece(chunk.get("content") or "", "", now)
            if chunk.get("stop"):
                self._reason = "length" if chunk.get("stop_type") == "limit" else "stop"
                return out + self._finish(now)
            return out
        choice = (chunk.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        for call in delta.get("tool_calls") or []:
            known = self._calls.setdefault(
                int(call.get("index", 0)), {"function": {"name": "", "arguments": ""}}
            )
            if call.get("id"):
                known["id"] = call["id"]
            function = call.get("function") or {}
            known["function"]["name"] += function.get("name") or ""
            known["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            self._reason = _DONE_REASONS.get(choice["finish_reason"], "stop")
        return self._piece(delta.get("content") or "", delta.get("reasoning_content") or "", now)

    def _piece(
        self, content: str, thinking: str, now: float, calls: list[dict[str, Any]] | None = None
    ) -> list[bytes]:
        if not content and not thinking and not calls:
            return []
        model, generate = self._timing.model, self._generate
        document = _answer_piece(model, now, content, thinking, calls or [], generate=generate)
        document["done"] = False
        return [_line(document)]

    def _finish(self, now: float) -> list[bytes]:
        if self.finished:
            return []
        self.finished = True
        calls = _tool_calls_from_openai([self._calls[index] for index in sorted(self._calls)])
        out = self._piece("", "", now, calls) if calls else []
        document: dict[str, Any] = {"model": self._timing.model, "created_at": created_at(now)}
        if self._generate:
            document["response"] = ""
        else:
            document["message"] = {"role": "assistant", "content": ""}
        document.update({"done": True, "done_reason": self._reason})
        document.update(metrics(self._timings, self._usage, now - self._timing.started, self._timing.load_s))
        return [*out, _line(document)]


def _line(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"
