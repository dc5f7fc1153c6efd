"""One request, timed from the client's side: latency, or TTFT and the gaps between streamed tokens."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from orchestrator.errors import RequestFailed


@dataclass(frozen=True)
class StreamSample:
    """A streamed completion as the client saw it."""

    ttft_s: float  # request sent to first content
    total_s: float  # request sent to the end of the stream
    gaps_s: tuple[float, ...]  # between consecutive content chunks (ITL)
    chunks: int  # content chunks received (one token each for llama-server)
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's own, from the last chunk

    @property
    def tokens_per_s(self) -> float:
        """Generation rate after the first token, as the client saw it."""
        span = self.total_s - self.ttft_s
        return (self.chunks - 1) / span if self.chunks > 1 and span > 0 else 0.0


def _content(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or [{}]
    first = choices[0]
    return str((first.get("delta") or {}).get("content") or first.get("text") or "")


@dataclass(frozen=True)
class _Event:
    """One line of a stream, as the timing needs it."""

    content: bool = False  # it carries generated text
    done: bool = False  # the stream's own end
    timings: dict[str, Any] | None = None
    error: str | None = None


def _sse_event(line: str) -> _Event | None:
    """An OpenAI / llama-server SSE line (None: not an event)."""
    if not line.startswith("data: "):
        return None
    if line == "data: [DONE]":
        return _Event(done=True)
    chunk = json.loads(line[6:])
    if "error" in chunk:
        return _Event(error=str(chunk["error"]))
    return _Event(bool(_content(chunk)), timings=chunk.get("timings"))


def _ndjson_event(line: str) -> _Event | None:
    """A line of Ollama's stream: one JSON object."""
    if not line:
        return None
    chunk = json.loads(line)
    if "error" in chunk:
        return _Event(error=str(chunk["error"]))
    content = bool((chunk.get("message") or {}).get("content") or chunk.get("response"))
    timings = {"prompt_n": chunk.get("prompt_eval_count"), "predicted_n": chunk.get("eval_count")}
    return _Event(content, done=bool(chunk.get("done")), timings=timings if chunk.get("done") else None)


async def stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None, *,
    ndjson: bool = False,
) -> StreamSample:  # fmt: skip
    """POST ``body`` (with stream on) to ``url`` and time every content chunk; ``ndjson``: Ollama's
    stream (one JSON object a line) rather than SSE."""
    parse = _ndjson_event if ndjson else _sse_event
    started = time.perf_counter()
    arrivals: list[float] = []
    timings: dict[str, Any] = {}
    async with client.stream("POST", url, json={**body, "stream": True}, headers=headers) as response:
        if response.status_code != 200:
            raise RequestFailed(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        done = False
        async for line in response.aiter_lines():
            event = parse(line)
            if event is None:
                continue
            if event.error is not None:
                raise RequestFailed(f"{url}: error event: {event.error}")
            if event.content:
                arrivals.append(time.perf_counter())
            timings = event.timings or timings
            if event.done:
                done = True
                break
        if not done:
            raise RequestFailed(f"{url}: the stream ended without its end ([DONE], or done: true)")
    finished = time.perf_counter()
    if not arrivals:
        raise RequestFailed(f"{url}: the stream carried no content")
    gaps = tuple(later - earlier for earlier, later in itertools.pairwise(arrivals))
    return StreamSample(arrivals[0] - started, finished - started, gaps, len(arrivals), timings)


async def post(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[float, dict[str, Any]]:
    """POST ``body`` (not streamed); (seconds until the whole response was read, its JSON)."""
    started = time.perf_counter()
    response = await client.post(url, json=body, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RequestFailed(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
    payload: dict[str, Any] = response.json()
    return elapsed, payload
