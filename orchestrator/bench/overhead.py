"""`bench overhead`: what the proxy costs, measured against the same child reached directly, interleaved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import trio

from orchestrator.bench import measure
from orchestrator.bench.summary import fmt, mean_std, percentile, ratio
from orchestrator.bench.target import Target
from orchestrator.bench.usage import UsageMeter, machine_description
from orchestrator.errors import BenchError

CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class OverheadPlan:
    model: str
    small_requests: int = 100  # per path: max_tokens 1, not streamed
    streams: int = 12  # per path
    stream_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 4, 16)
    compare_url: str | None = None  # another OpenAI-compatible server in front of the same model
    compare_model: str | None = None  # the model's name there (default: ``model``)


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    model: str
    headers: dict[str, str]


def small_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0,
    }


def stream_body(model: str, tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
    }


def rotated(items: Sequence[Endpoint], turn: int) -> list[Endpoint]:
    """Each turn starts with the next endpoint, so none always goes first (caches, clocks)."""
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


def openai_base(url: str) -> str:
    """``http://host:port`` from a base URL given with or without ``/v1``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def child_port(client: httpx.AsyncClient, target: Target, model: str) -> int:
    """The port of the child that serves ``model`` (it must be running)."""
    response = await client.get(f"{target.url}/v1/models", headers=dict(target.headers))
    keys = [entry["sidecar_key"] for entry in response.json()["data"] if entry["id"] == model]
    if not keys:
        raise BenchError(f"the daemon at {target.url} has no model or agent named {model!r}")
    for sidecar in await target.sidecars(client):
        if sidecar["key"] == keys[0] and sidecar.get("port"):
            return int(sidecar["port"])
    raise BenchError(f"{model} has no running child at {target.url}")


async def throughput(
    client: httpx.AsyncClient, endpoint: Endpoint, concurrency: int, requests: int, tokens: int
) -> dict[str, float]:
    """``requests`` streams from ``concurrency`` clients at once: requests/s and tokens/s."""
    remaining = requests
    generated = 0

    async def worker() -> None:
        nonlocal remaining, generated
        while remaining > 0:
            remaining -= 1
            sample = await measure.stream(
                client, endpoint.url, stream_body(endpoint.model, tokens), endpoint.headers
            )
            generated += sample.chunks

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    wall = trio.current_time() - started
    return {"requests_per_s": requests / wall, "tokens_per_s": generated / wall}


async def measure_overhead(
    target: Target, plan: OverheadPlan, say: Callable[[str], None] = lambda _text: None
) -> dict[str, Any]:
    """Every figure of the report, for each endpoint: direct, through (and compare)."""
    timeout = httpx.Timeout(30, read=600)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        through_url = target.url + CHAT
        say(f"starting {plan.model} through {target.url}")
        await measure.post(client, through_url, small_body(plan.model), dict(target.headers))
        port = await child_port(client, target, plan.model)
        endpoints = [
            Endpoint("direct", f"http://127.0.0.1:{port}{CHAT}", plan.model, {}),
            Endpoint("through", through_url, plan.model, dict(target.headers)),
        ]
        if plan.compare_url:
            compare = Endpoint(
                "compare", openai_base(plan.compare_url) + CHAT, plan.compare_model or plan.model, {}
            )
            endpoints.append(compare)
        for endpoint in endpoints:  # warm every path: connections, caches
            for _ in range(3):
                await measure.post(client, endpoint.url, small_body(endpoint.model), endpoint.headers)

        meter = UsageMeter(target.pid) if target.pid is not None else None
        async with trio.open_nursery() as background:
            if meter is not None:
                await background.start(meter.run)
            results = await _measure_all(client, endpoints, plan, say)
            background.cancel_scope.cancel()
    through_requests = plan.small_requests + plan.streams + sum(max(8, 2 * c) for c in plan.concurrency)
    report: dict[str, Any] = {
        "tool": "overhead",
        "model": plan.model,
        "machine": machine_description(),
        "plan": asdict(plan),
        "endpoints": [e.name for e in endpoints],
        "metrics": results,
    }
    if meter is not None:
        usage = meter.result()
        report["daemon"] = {
            "cpu_s": usage.cpu_s,
            "cpu_ms_per_request": round(1000 * usage.cpu_s / through_requests, 3),
            "peak_rss_mb": round(usage.peak_rss_bytes / 2**20, 1),
        }
    return report


async def _measure_all(
    client: httpx.AsyncClient, endpoints: list[Endpoint], plan: OverheadPlan, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    names = [e.name for e in endpoints]
    small: dict[str, list[float]] = {name: [] for name in names}
    say(f"{plan.small_requests} small requests per endpoint, interleaved")
    for turn in range(plan.small_requests):
        for endpoint in rotated(endpoints, turn):
            latency, _ = await measure.post(
                client, endpoint.url, small_body(endpoint.model), endpoint.headers
            )
            small[endpoint.name].append(latency * 1000)

    say(f"{plan.streams} streams of {plan.stream_tokens} tokens per endpoint, interleaved")
    streams: dict[str, list[measure.StreamSample]] = {name: [] for name in names}
    for turn in range(plan.streams):
        for endpoint in rotated(endpoints, turn):
            body = stream_body(endpoint.model, plan.stream_tokens)
            streams[endpoint.name].append(await measure.stream(client, endpoint.url, body, endpoint.headers))

    def per_endpoint(pick: Callable[[str], float]) -> dict[str, float]:
        return {name: pick(name) for name in names}

    def gaps(name: str) -> list[float]:
        return [gap * 1000 for sample in streams[name] for gap in sample.gaps_s]

    metrics = [
        _metric("small request p50", "ms", "lower", per_endpoint(lambda n: percentile(small[n], 0.5))),
        _metric("small request p99", "ms", "lower", per_endpoint(lambda n: percentile(small[n], 0.99))),
        _metric("TTFT p50", "ms", "lower",
                per_endpoint(lambda n: percentile([s.ttft_s * 1000 for s in streams[n]], 0.5))),
        _metric("ITL p50", "ms", "lower", per_endpoint(lambda n: percentile(gaps(n), 0.5))),
        _metric("ITL p99", "ms", "lower", per_endpoint(lambda n: percentile(gaps(n), 0.99))),
        _metric("stream tokens/s", "tok/s", "higher",
                per_endpoint(lambda n: mean_std([s.tokens_per_s for s in streams[n]])[0])),
    ]  # fmt: skip
    for concurrency in plan.concurrency:
        requests = max(8, 2 * concurrency)
        say(f"throughput at concurrency {concurrency}: {requests} streams per endpoint")
        level: dict[str, dict[str, float]] = {}
        for endpoint in rotated(endpoints, concurrency):
            level[endpoint.name] = await throughput(
                client, endpoint, concurrency, requests, plan.stream_tokens
            )
        metrics.append(_metric(f"c={concurrency} requests/s", "req/s", "higher",
                               {n: level[n]["requests_per_s"] for n in names}))  # fmt: skip
        metrics.append(_metric(f"c={concurrency} tokens/s", "tok/s", "higher",
                               {n: level[n]["tokens_per_s"] for n in names}))  # fmt: skip
    return metrics


def _metric(name: str, unit: str, better: str, values: dict[str, float]) -> dict[str, Any]:
    direct = values["direct"]
    entry: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "better": better,
        "values": {key: round(value, 4) for key, value in values.items()},
        "ratio": {key: round(ratio(value, direct), 4) for key, value in values.items() if key != "direct"},
    }
    if unit == "ms":
        entry["added_ms"] = {
            key: round(value - direct, 4) for key, value in values.items() if key != "direct"
        }
    return entry


def render_overhead(report: dict[str, Any]) -> str:
    """A markdown table: each metric for each endpoint, with through/direct (and compare/direct)."""
    others = [name for name in report["endpoints"] if name != "direct"]
    header = ["metric", *report["endpoints"], *(f"{name}/direct" for name in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in report["metrics"]:
        values = [fmt(metric["values"][name], 2) for name in report["endpoints"]]
        ratios = [fmt(metric["ratio"][name], 3) for name in others]
        lines.append(f"| {metric['name']} ({metric['unit']}) | " + " | ".join(values + ratios) + " |")
    daemon = report.get("daemon")
    if daemon:
        lines.append("")
        lines.append(
            f"Daemon during the run: {daemon['cpu_s']:.2f} CPU s ({daemon['cpu_ms_per_request']:.2f} ms per "
            f"proxied request), peak RSS {daemon['peak_rss_mb']:.1f} MB."
        )
    lines.append(f"Model {report['model']}; {report['machine']}.")
    return "\n".join(lines)
