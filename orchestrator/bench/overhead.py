"""`bench overhead`: what the proxy costs, measured against the same child reached directly, interleaved."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import httpx
import trio

from orchestrator.bench import measure
from orchestrator.bench.summary import fmt, mean_std, percentile, ratio
from orchestrator.bench.target import Target
from orchestrator.bench.usage import UsageMeter, machine_description
from orchestrator.errors import BenchError, RequestFailed

CHAT = "/v1/chat/completions"
OLLAMA_CHAT = "/api/chat"

T = TypeVar("T")


@dataclass(frozen=True)
class OverheadPlan:
    model: str
    small_requests: int = 100  # per path: max_tokens 1, not streamed
    streams: int = 12  # per path
    stream_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 4, 16)
    compare_url: str | None = None  # another OpenAI-compatible server in front of the same model
    compare_model: str | None = None  # the model's name there (default: ``model``)
    compare_direct_url: str | None = None  # that server's own child, reached directly
    compare_pid: int | None = None  # that server's process, for its CPU and memory
    api: str = "openai"  # the route measured through the daemon: "openai" (chat) or "ollama" (/api/chat)


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    model: str
    headers: dict[str, str]
    baseline: str | None = None  # the endpoint (its own child, direct) its cost is measured against
    ollama: bool = False  # Ollama's /api/chat (its bodies, its NDJSON stream) rather than OpenAI's

    def small(self, client: httpx.AsyncClient) -> Awaitable[tuple[float, dict[str, Any]]]:
        """One small request (one token, not streamed), timed."""
        return measure.post(client, self.url, self._body(small_body(self.model)), self.headers)

    def stream(self, client: httpx.AsyncClient, tokens: int) -> Awaitable[measure.StreamSample]:
        """One stream of ``tokens`` tokens, each chunk timed."""
        body = self._body(stream_body(self.model, tokens))
        return measure.stream(client, self.url, body, self.headers, ndjson=self.ollama)

    def _body(self, openai: dict[str, Any]) -> dict[str, Any]:
        if not self.ollama:
            return openai
        # The same request in Ollama's words (ignore_eos, which Ollama lacks, as a llama.cpp option).
        options = {"num_predict": openai["max_tokens"], "temperature": openai["temperature"]}
        options.update({"ignore_eos": True} if openai.get("ignore_eos") else {})
        return {"model": self.model, "messages": openai["messages"], "stream": False, "options": options}


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


async def counted(request: Awaitable[T], failures: list[str]) -> T | None:
    """The request's result, or None with its failure noted: a request that fails is counted, not
    retried, and the run goes on (a proxy that drops some requests should show it, not end the run)."""
    try:
        return await request
    except (RequestFailed, httpx.TransportError) as failure:
        failures.append(str(failure) or type(failure).__name__)
        return None


@dataclass(frozen=True)
class Throughput:
    requests_per_s: float  # of the requests that succeeded
    tokens_per_s: float
    failures: list[str]  # why each request that failed did


async def throughput(
    client: httpx.AsyncClient, endpoint: Endpoint, concurrency: int, requests: int, tokens: int
) -> Throughput:
    """``requests`` streams from ``concurrency`` clients at once; those that fail are counted."""
    remaining = requests
    generated = 0
    failures: list[str] = []

    async def worker() -> None:
        nonlocal remaining, generated
        while remaining > 0:
            remaining -= 1
            sample = await counted(endpoint.stream(client, tokens), failures)
            if sample is not None:
                generated += sample.chunks

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    wall = trio.current_time() - started
    served = requests - len(failures)
    return Throughput(served / wall, generated / wall, failures)


def endpoints_of(plan: OverheadPlan, base_url: str, port: int, headers: dict[str, str]) -> list[Endpoint]:
    """Direct and through (OpenAI's chat, or Ollama's); the compared proxy, against its own child when
    that is given."""
    ollama = plan.api == "ollama"
    endpoints = [
        Endpoint("direct", f"http://127.0.0.1:{port}{CHAT}", plan.model, {}),
        Endpoint(
            "through", base_url + (OLLAMA_CHAT if ollama else CHAT), plan.model, headers, "direct", ollama
        ),
    ]
    if plan.compare_url:
        compare_model = plan.compare_model or plan.model
        baseline = "direct"
        if plan.compare_direct_url:
            baseline = "compare-direct"
            endpoints.append(
                Endpoint(baseline, openai_base(plan.compare_direct_url) + CHAT, compare_model, {})
            )
        endpoints.append(
            Endpoint("compare", openai_base(plan.compare_url) + CHAT, compare_model, {}, baseline=baseline)
        )
    return endpoints


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
        endpoints = endpoints_of(plan, target.url, port, dict(target.headers))
        for endpoint in endpoints:  # warm every path: connections, caches
            for _ in range(3):
                await endpoint.small(client)

        pids = {"through": target.pid, "compare": plan.compare_pid if plan.compare_url else None}
        meters = {name: UsageMeter(pid) for name, pid in pids.items() if pid is not None}
        async with trio.open_nursery() as background:
            for meter in meters.values():
                await background.start(meter.run)
            measured = await _measure_all(client, endpoints, plan, meters, say)
            background.cancel_scope.cancel()
    report: dict[str, Any] = {
        "tool": "overhead",
        "model": plan.model,
        "api": plan.api,
        "machine": machine_description(),
        "plan": asdict(plan),
        "endpoints": [e.name for e in endpoints],
        "baselines": {e.name: e.baseline for e in endpoints if e.baseline},
        "metrics": measured.metrics,
        "failures": measured.failures,
        "usage": {},
    }
    for name, meter in meters.items():
        usage = meter.result()
        report["usage"][name] = {
            "cpu_s": usage.cpu_s,
            **measured.cpu[name],
            "peak_rss_mb": round(usage.peak_rss_bytes / 2**20, 1),
            "final_rss_mb": round(usage.final_rss_bytes / 2**20, 1),
        }
    return report


@dataclass(frozen=True)
class Measured:
    metrics: list[dict[str, Any]]
    cpu: dict[str, dict[str, float]]  # each measured proxy's CPU per small request and per streamed chunk
    failures: list[dict[str, Any]]  # by phase and endpoint: requests left out of the figures


async def _measure_all(
    client: httpx.AsyncClient,
    endpoints: list[Endpoint],
    plan: OverheadPlan,
    meters: dict[str, UsageMeter],
    say: Callable[[str], None],
) -> Measured:
    names = [e.name for e in endpoints]
    failures: list[dict[str, Any]] = []

    def note_failures(phase: str, failed: dict[str, list[str]], of: int) -> None:
        for endpoint, reasons in failed.items():
            if reasons:
                failures.append({"phase": phase, "endpoint": endpoint, "failed": len(reasons), "of": of,
                                 "first": reasons[0]})  # fmt: skip

    small: dict[str, list[float]] = {name: [] for name in names}
    small_failed: dict[str, list[str]] = {name: [] for name in names}
    say(f"{plan.small_requests} small requests per endpoint, interleaved")
    cpu_at_start = {name: meter.cpu_s() for name, meter in meters.items()}
    for turn in range(plan.small_requests):
        for endpoint in rotated(endpoints, turn):
            answer = await counted(endpoint.small(client), small_failed[endpoint.name])
            if answer is not None:
                small[endpoint.name].append(answer[0] * 1000)
    cpu_after_small = {name: meter.cpu_s() for name, meter in meters.items()}
    note_failures("the small requests", small_failed, plan.small_requests)

    say(f"{plan.streams} streams of {plan.stream_tokens} tokens per endpoint, interleaved")
    streams: dict[str, list[measure.StreamSample]] = {name: [] for name in names}
    streams_failed: dict[str, list[str]] = {name: [] for name in names}
    for turn in range(plan.streams):
        for endpoint in rotated(endpoints, turn):
            sample = await counted(endpoint.stream(client, plan.stream_tokens), streams_failed[endpoint.name])
            if sample is not None:
                streams[endpoint.name].append(sample)
    note_failures("the streams", streams_failed, plan.streams)
    phase_cpu = {
        name: {
            "cpu_ms_per_small_request": round(
                1000 * (cpu_after_small[name] - cpu_at_start[name]) / plan.small_requests, 3
            ),
            "cpu_ms_per_chunk": round(
                1000 * (meter.cpu_s() - cpu_after_small[name]) / max(1, sum(s.chunks for s in streams[name])),
                3,
            ),
        }
        for name, meter in meters.items()
    }

    def per_endpoint(pick: Callable[[str], float]) -> dict[str, float]:
        return {name: pick(name) for name in names}

    def entry(name: str, unit: str, better: str, values: dict[str, float]) -> dict[str, Any]:
        return metric_entry(name, unit, better, values, endpoints)

    def gaps(name: str) -> list[float]:
        return [gap * 1000 for sample in streams[name] for gap in sample.gaps_s]

    metrics = [
        entry("small request p50", "ms", "lower", per_endpoint(lambda n: percentile(small[n], 0.5))),
        entry("small request p99", "ms", "lower", per_endpoint(lambda n: percentile(small[n], 0.99))),
        entry("TTFT p50", "ms", "lower",
                per_endpoint(lambda n: percentile([s.ttft_s * 1000 for s in streams[n]], 0.5))),
        entry("ITL p50", "ms", "lower", per_endpoint(lambda n: percentile(gaps(n), 0.5))),
        entry("ITL p99", "ms", "lower", per_endpoint(lambda n: percentile(gaps(n), 0.99))),
        entry("stream tokens/s", "tok/s", "higher",
                per_endpoint(lambda n: mean_std([s.tokens_per_s for s in streams[n]])[0])),
    ]  # fmt: skip
    for concurrency in plan.concurrency:
        requests = max(8, 2 * concurrency)
        say(f"throughput at concurrency {concurrency}: {requests} streams per endpoint")
        level: dict[str, Throughput] = {}
        for endpoint in rotated(endpoints, concurrency):
            level[endpoint.name] = await throughput(
                client, endpoint, concurrency, requests, plan.stream_tokens
            )
        note_failures(f"throughput at c={concurrency}", {n: level[n].failures for n in names}, requests)
        metrics.append(entry(f"c={concurrency} requests/s", "req/s", "higher",
                               {n: level[n].requests_per_s for n in names}))  # fmt: skip
        metrics.append(entry(f"c={concurrency} tokens/s", "tok/s", "higher",
                               {n: level[n].tokens_per_s for n in names}))  # fmt: skip
    return Measured(metrics, phase_cpu, failures)


def metric_entry(
    name: str, unit: str, better: str, values: dict[str, float], endpoints: Sequence[Endpoint]
) -> dict[str, Any]:
    """One metric: each endpoint's value, and each proxy's ratio to (and, in ms, excess over) its baseline."""
    proxies = [(e.name, e.baseline) for e in endpoints if e.baseline]
    entry: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "better": better,
        "values": {key: round(value, 4) for key, value in values.items()},
        "ratio": {key: round(ratio(values[key], values[base]), 4) for key, base in proxies},
    }
    if unit == "ms":
        entry["added_ms"] = {key: round(values[key] - values[base], 4) for key, base in proxies}
    return entry


def render_overhead(report: dict[str, Any]) -> str:
    """A markdown table: each metric for each endpoint, and each proxy against its baseline."""
    baselines: dict[str, str] = report["baselines"]
    header = ["metric", *report["endpoints"], *(f"{name}/{base}" for name, base in baselines.items())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in report["metrics"]:
        values = [fmt(metric["values"][name], 2) for name in report["endpoints"]]
        ratios = [fmt(metric["ratio"][name], 3) for name in baselines]
        lines.append(f"| {metric['name']} ({metric['unit']}) | " + " | ".join(values + ratios) + " |")
    if report["usage"]:
        lines += ["", "| proxy | CPU s | CPU ms per small request | CPU ms per streamed chunk | "
                  "peak RSS (MB) | RSS after (MB) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, usage in report["usage"].items():
            lines.append(
                f"| {name} | {usage['cpu_s']:.2f} | {usage['cpu_ms_per_small_request']:.3f} | "
                f"{usage['cpu_ms_per_chunk']:.3f} | {usage['peak_rss_mb']:.1f} | "
                f"{usage['final_rss_mb']:.1f} |"
            )
        lines.append("A proxy's processes are its own and their descendants, less the llama-server children.")
    for failure in report["failures"]:
        lines.append(
            f"{failure['endpoint']} failed {failure['failed']} of {failure['of']} requests in "
            f"{failure['phase']} (its figures there count the others); the first: {failure['first']}"
        )
    api = "Ollama's /api/chat" if report.get("api") == "ollama" else "OpenAI's chat"
    lines.append(f"Model {report['model']}, through {api}; {report['machine']}.")
    return "\n".join(lines)
