"""`bench cold`: what a cold start and a swap cost, split into llama-server's own load and the daemon's part.

The split comes from timestamps on one clock (the daemon's machine): the
request sent, the daemon deciding to spawn (``started_at``), llama-server's
first and "listening" log lines (as the daemon read them), the daemon marking
the child ready (``ready_at``), and the first token reaching the client.

The readiness lag can be slightly negative: the daemon polls /health as well
as reading stderr, and the poll may see the child ready a moment before the
"listening" line has come through the pipe.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from orchestrator.bench import measure
from orchestrator.bench.summary import fmt, mean_std
from orchestrator.bench.target import Target
from orchestrator.bench.usage import machine_description
from orchestrator.errors import BenchError

CHAT = "/v1/chat/completions"
LISTENING = re.compile(r"listening on|model loaded")


@dataclass(frozen=True)
class ColdPlan:
    first: str  # model A
    second: str  # model B, for the swap
    repetitions: int = 3


def chat_body(model: str, system: str = "") -> dict[str, Any]:
    """A short question, after a long shared ``system`` prompt when one is given (an agent's)."""
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "model": model,
        "messages": [*messages, {"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "temperature": 0,
    }


async def _log_lines(target: Target, key: str) -> list[dict[str, Any]]:
    """The child's recent stderr lines, with the daemon's read timestamps."""
    url = target.url.replace("http", "ws", 1) + f"/ws/logs/{key}?follow=0"
    auth = target.headers.get("Authorization", "")
    if auth:
        url += "&key=" + quote(auth.removeprefix("Bearer "))
    lines = []
    async with open_websocket_url(url) as feed:
        while True:
            try:
                message = json.loads(await feed.get_message())
            except ConnectionClosed:  # the server closes the feed after the history: that is the end
                break
            if message.get("type") == "line":
                lines.append(message)
    return lines


async def _sidecar_for(client: httpx.AsyncClient, target: Target, model: str) -> dict[str, Any]:
    response = await client.get(f"{target.url}/v1/models", headers=dict(target.headers))
    keys = [entry["sidecar_key"] for entry in response.json()["data"] if entry["id"] == model]
    if not keys:
        raise BenchError(f"the daemon at {target.url} has no model or agent named {model!r}")
    for sidecar in await target.sidecars(client):
        if sidecar["key"] == keys[0]:
            return sidecar
    raise BenchError(f"{model} has no child after a request for it")


async def cold_start(
    client: httpx.AsyncClient, target: Target, model: str, system: str = ""
) -> dict[str, float]:
    """One request for a model with no child: TTFT and where the time went (all in ms), and the
    prompt tokens the child found cached (``timings.cache_n``)."""
    sent = time.time()
    sample = await ask(client, target, model, system)
    sidecar = await _sidecar_for(client, target, model)
    lines = await _log_lines(target, sidecar["key"])
    listening = [line["ts"] for line in lines if LISTENING.search(line["text"])]
    if not lines or not listening or sidecar.get("ready_at") is None:
        raise BenchError(f"{model}: the child's log does not show it becoming ready")
    first_line, ready_line, ready = lines[0]["ts"], max(listening), sidecar["ready_at"]
    ttft = sample.ttft_s * 1000
    return {
        "ttft_ms": ttft,
        "spawn_ms": (first_line - sent) * 1000,  # request to the child's first log line
        "llama_load_ms": (ready_line - first_line) * 1000,  # llama-server's own load
        "readiness_lag_ms": (ready - ready_line) * 1000,  # "listening" printed to ready marked
        "after_ready_ms": ttft - (ready - sent) * 1000,  # routing, proxying, prompt, first token
        "ready_ms": (ready - sent) * 1000,  # request to ready: spawn, load (and a restore)
        "cached_tokens": float(sample.timings.get("cache_n", 0)),
        "prompt_tokens": float(sample.timings.get("cache_n", 0) + sample.timings.get("prompt_n", 0)),
    }


async def measure_cold(
    target: Target, plan: ColdPlan, say: Callable[[str], None] = lambda _text: None
) -> dict[str, Any]:
    """Cold starts of A, warm TTFT of A, and the A -> B -> A swap in a pool of one."""
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "swap_to_b": [], "swap_back_to_a": []}
    warm: list[float] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=600), trust_env=False) as client:
        for repetition in range(plan.repetitions):
            say(f"repetition {repetition + 1}/{plan.repetitions}: cold {plan.first}, then swaps")
            await target.evict_all(client)
            await wait_empty(client, target)
            runs["cold"].append(await cold_start(client, target, plan.first))
            sample = await ask(client, target, plan.first)
            warm.append(sample.ttft_s * 1000)
            runs["swap_to_b"].append(await cold_start(client, target, plan.second))
            runs["swap_back_to_a"].append(await cold_start(client, target, plan.first))
    return cold_report(plan, runs, warm)


def cold_report(plan: Any, runs: dict[str, list[dict[str, float]]], warm: list[float]) -> dict[str, Any]:
    """`bench cold`'s report: every run, and per phase each figure's mean and spread."""
    return {
        "tool": "cold",
        "machine": machine_description(),
        "plan": asdict(plan),
        "warm_ttft_ms": mean_std(warm),
        "runs": runs,
        "summary": {
            phase: {field: mean_std([run[field] for run in phase_runs]) for field in phase_runs[0]}
            for phase, phase_runs in runs.items()
        },
    }


async def ask(
    client: httpx.AsyncClient, target: Target, model: str, system: str = ""
) -> measure.StreamSample:
    """One streamed chat_body request, timed."""
    return await measure.stream(client, target.url + CHAT, chat_body(model, system), dict(target.headers))


async def wait_empty(client: httpx.AsyncClient, target: Target) -> None:
    with trio.fail_after(60):
        while await target.sidecars(client):  # noqa: ASYNC110 - the daemon is another process: poll it
            await trio.sleep(0.05)


def render_cold(report: dict[str, Any]) -> str:
    """A markdown table: mean ± stddev of each part, per phase."""
    fields = [
        ("ttft_ms", "time to first token"),
        ("spawn_ms", "request to llama-server's first log line"),
        ("llama_load_ms", "llama-server's own load (first line to listening)"),
        ("readiness_lag_ms", "readiness lag (listening printed to ready)"),
        ("after_ready_ms", "ready to first token (routing, prompt, first token)"),
    ]
    first, second = report["plan"]["first"], report["plan"]["second"]
    phases = [("cold", f"cold {first}"), ("swap_to_b", f"swap to {second}"),
              ("swap_back_to_a", f"swap back to {first}")]  # fmt: skip
    lines = ["| ms (mean ± sd) | " + " | ".join(title for _, title in phases) + " |", "|---" * 4 + "|"]
    for field, title in fields:
        cells = [
            f"{fmt(report['summary'][phase][field][0], 1)} ± {fmt(report['summary'][phase][field][1], 1)}"
            for phase, _ in phases
        ]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    warm_mean, warm_sd = report["warm_ttft_ms"]
    lines.append("")
    lines.append(
        f"Warm time to first token: {fmt(warm_mean, 1)} ± {fmt(warm_sd, 1)} ms; "
        f"{report['plan']['repetitions']} repetitions; {report['machine']}."
    )
    return "\n".join(lines)
