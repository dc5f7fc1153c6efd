"""Prometheus metrics of the pool and its requests, and each child's own ``llamacpp:*`` series.

Counters and histograms count the pool's typed events (an observer of the
pool: called for every event, so nothing is lost to a slow feed); gauges are
read off the pool when scraped. Each child runs with ``--metrics``; a scrape
asks every ready child for its series at once, bounded in time, and merges
them in with ``model`` and ``key`` labels, so one target covers the machine.
A child that does not answer in time is left out of that scrape and counted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from orchestrator.errors import UpstreamError
from orchestrator.fleet import signals
from orchestrator.fleet.signals import NodeStatus
from orchestrator.policy import State
from orchestrator.supervisor.events import (
    BackingOff,
    Evicted,
    Exited,
    KvDropped,
    KvRestored,
    KvSaved,
    PoolEvent,
    Ready,
    Reloaded,
    RequestFigures,
    RequestFinished,
    RequestRefused,
    Spawned,
)
from orchestrator.supervisor.fleetview import node_status
from orchestrator.supervisor.pool import Pool, SidecarLike

log = logging.getLogger("orchestrator.supervisor.metrics")

PREFIX = "llama_sidecar"
# From a cached one-token answer (milliseconds) to a long generation on a CPU (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
# A saved slot moves in milliseconds (16 MB: 9 ms here) up to seconds for gigabytes on a slow disk.
KV_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CHILD_SCRAPE_TIMEOUT_S = 2.0


_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class PoolMetrics:
    """The daemon's metrics registry, fed by ``pool``'s events."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._series_of: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        request_labels = ("model", "agent", "route")
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests on the OpenAI routes, by outcome",
            (*request_labels, "code"),
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Whole request, to the last byte of the answer",
            request_labels, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "Request start to the first byte of the answer's body",
            request_labels, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of answered requests (the child's count)",
            ("model", "agent"), registry=r,
        )  # fmt: skip
        self.generated_tokens = Counter(
            f"{PREFIX}_generated_tokens", "Generated tokens of answered requests (the child's count)",
            ("model", "agent"), registry=r,
        )  # fmt: skip
        self.generation_rate = Histogram(
            f"{PREFIX}_generation_tokens_per_second", "Generation speed of finished requests",
            ("model", "agent"), buckets=RATE_BUCKETS, registry=r,
        )  # fmt: skip
        self.refused = Counter(
            f"{PREFIX}_refused_requests", "Requests the daemon answered itself with an error, by its code",
            ("model", "code"), registry=r,
        )  # fmt: skip
        self.spawns = Counter(f"{PREFIX}_spawns", "Children started", ("model",), registry=r)
        self.restarts = Counter(
            f"{PREFIX}_restarts", "Children started for a key that had run before", ("model",), registry=r
        )
        self.load = Histogram(
            f"{PREFIX}_load_seconds", "A child's start to ready", ("model",), buckets=LOAD_BUCKETS, registry=r
        )
        self.evictions = Counter(
            f"{PREFIX}_evictions", "Children taken out of service, by reason", ("model", "reason"), registry=r
        )
        self.exits = Counter(
            f"{PREFIX}_child_exits", "Children gone, by outcome (stopped, crashed, failed_to_start)",
            ("model", "outcome"), registry=r,
        )  # fmt: skip
        self.backoffs = Counter(
            f"{PREFIX}_crash_loop_backoffs",
            "Crash-loop backoffs begun (pool.crash_loop)",
            ("model",),
            registry=r,
        )
        self.reloads = Counter(f"{PREFIX}_reloads", "Configurations applied by a reload", registry=r)
        self.child_scrape_failures = Counter(
            f"{PREFIX}_child_scrape_failures", "Children left out of a scrape (no answer in time)",
            ("model",), registry=r,
        )  # fmt: skip
        kv_labels = ("model", "action")  # action: save or restore
        self.kv_slots = Counter(
            f"{PREFIX}_kv_cache_slots", "Slots saved before a stop or restored before ready, by action",
            kv_labels, registry=r,
        )  # fmt: skip
        self.kv_bytes = Counter(
            f"{PREFIX}_kv_cache_bytes", "Bytes of the slots saved or restored, by action",
            kv_labels, registry=r,
        )  # fmt: skip
        self.kv_seconds = Histogram(
            f"{PREFIX}_kv_cache_seconds", "Time one slot's save or restore took, by action",
            kv_labels, buckets=KV_BUCKETS, registry=r,
        )  # fmt: skip
        self.kv_dropped = Counter(
            f"{PREFIX}_kv_cache_dropped", "Slots not saved or saved slots not restored (the log says why)",
            kv_labels, registry=r,
        )  # fmt: skip
        r.register(_PoolGauges(pool))
        ProcessCollector(namespace=PREFIX, registry=r)  # the daemon's own CPU and memory
        pool.observers.append(self.observe)

    def observe(self, event: PoolEvent) -> None:
        """Count one pool event."""
        if isinstance(event, RequestFinished):
            if event.figures is not None:
                self._request(event.model, event.figures)
        elif isinstance(event, RequestRefused):
            self._request(event.model or "", event.figures)
            self.refused.labels(event.model or "", event.figures.code or "").inc()
        elif isinstance(event, Spawned):
            self.spawns.labels(event.model).inc()
            if event.restarts:
                self.restarts.labels(event.model).inc()
        elif isinstance(event, Ready):
            self.load.labels(event.model).observe(event.load_s)
        elif isinstance(event, Evicted):
            self.evictions.labels(event.model, event.reason.value).inc()
        elif isinstance(event, Exited):
            self.exits.labels(event.model, event.outcome.kind).inc()
        elif isinstance(event, BackingOff):
            self.backoffs.labels(event.model).inc()
        elif isinstance(event, Reloaded):
            self.reloads.inc()
        elif isinstance(event, KvSaved | KvRestored):
            action = "save" if isinstance(event, KvSaved) else "restore"
            self.kv_slots.labels(event.model, action).inc()
            self.kv_bytes.labels(event.model, action).inc(event.bytes)
            self.kv_seconds.labels(event.model, action).observe(event.took_s)
        elif isinstance(event, KvDropped):
            self.kv_dropped.labels(event.model, event.action).inc()

    def _request(self, model: str, figures: RequestFigures) -> None:
        labels = (model, figures.asked, figures.route)
        self._series(self.requests, *labels, str(figures.status)).inc()
        self._series(self.duration, *labels).observe(figures.duration_s)
        if figures.ttft_s is not None:
            self._series(self.ttft, *labels).observe(figures.ttft_s)
        if figures.prompt_tokens is not None:
            self._series(self.prompt_tokens, model, figures.asked).inc(figures.prompt_tokens)
        if figures.generated_tokens is not None:
            self._series(self.generated_tokens, model, figures.asked).inc(figures.generated_tokens)
        if figures.tokens_per_s is not None:
            self._series(self.generation_rate, model, figures.asked).observe(figures.tokens_per_s)

    def _series(self, metric: _Metric, *values: str) -> _Metric:
        """``metric.labels(*values)``, kept: prometheus_client checks and converts the values on every call,
        and a request observes up to six series."""
        key = (metric, values)
        series = self._series_of.get(key)
        if series is None:
            series = self._series_of[key] = metric.labels(*values)
        return series  # type: ignore[return-value]  # labels() gives the metric's own type

    async def exposition(self, timeout_s: float = CHILD_SCRAPE_TIMEOUT_S) -> bytes:
        """The text exposition: ours, then every answering child's series with its labels, then the
        model-server series a router between machines reads (see fleet.signals)."""
        children = [s for s in self._pool.sidecars() if s.state is State.READY]
        texts: dict[str, tuple[SidecarLike, str]] = {}
        kv_usage: dict[str, float] = {}

        async def fetch(sidecar: SidecarLike) -> None:
            try:
                status, body = await sidecar.upstream.get("/metrics", timeout_s)
                if status == 200:
                    texts[sidecar.key] = (sidecar, body.decode("utf-8", "replace"))
                status, body = await sidecar.upstream.get("/slots", timeout_s)
            except UpstreamError as error:
                log.info("metrics of %s skipped: %s", sidecar.spec.model, error)
                return
            if status == 200:
                kv_usage[sidecar.key] = _kv_usage(body)

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for sidecar in children:
                    nursery.start_soon(fetch, sidecar)
        merged = _ChildSeries()
        for sidecar in children:
            fetched = texts.get(sidecar.key)
            if fetched is None or not merged.add(fetched[1], model=sidecar.spec.model, key=sidecar.key):
                self.child_scrape_failures.labels(sidecar.spec.model).inc()
        # Ours last: the failures just counted are in this scrape.
        node = node_status(self._pool, max(kv_usage.values(), default=0.0))
        return (
            generate_latest(merged.registry())
            + generate_latest(self.registry)
            + generate_latest(_fixed_registry(model_server_series(node, time.time())))
        )


def _kv_usage(slots_json: bytes) -> float:
    """A child's KV cache in use, 0..1: its slots' cached prompt tokens over their context."""
    try:
        slots = json.loads(slots_json)
        used = sum(int(slot.get("n_prompt_tokens", 0)) for slot in slots)
        size = sum(int(slot.get("n_ctx", 0)) for slot in slots)
    except (ValueError, TypeError, AttributeError):  # not the list of slots llama-server answers
        return 0.0
    return min(1.0, used / size) if size > 0 else 0.0


def model_server_series(node: NodeStatus, now: float) -> list[Metric]:
    """The Gateway API Inference Extension's model-server series for the node as a whole."""
    queued = GaugeMetricFamily(signals.QUEUED, "Requests waiting for a child, all models")
    queued.add_metric((), node.queued_requests)
    running = GaugeMetricFamily(signals.RUNNING, "Requests children are serving, all models")
    running.add_metric((), node.running_requests)
    kv = GaugeMetricFamily(signals.KV_USAGE, "KV cache in use in the fullest ready child, 0..1")
    kv.add_metric((), node.kv_usage)
    labels = signals.lora_labels(node)
    lora = GaugeMetricFamily(
        signals.LORA_INFO, "Models loaded (running), loading (waiting) and how many could be (max_lora); "
        "the value is when this was read", labels=tuple(labels),
    )  # fmt: skip
    lora.add_metric(tuple(labels.values()), now)
    return [queued, running, kv, lora]


def _fixed_registry(families: Iterable[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return registry


class _ChildSeries:
    """The children's families merged by name, each sample labelled with its child."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, text: str, **labels: str) -> bool:
        """Merge one child's exposition; False (and nothing merged) if it cannot be parsed."""
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as error:  # prometheus_client's parser reports bad text so
            log.info("metrics of %s skipped: %s", labels.get("model"), error)
            return False
        for family in families:
            into = self._families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, **labels}, sample.value, sample.timestamp)
        return True

    def registry(self) -> CollectorRegistry:
        return _fixed_registry(self._families.values())


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _PoolGauges(Collector):
    """What the pool holds right now, read when scraped."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool
        children = GaugeMetricFamily(
            f"{PREFIX}_sidecars", "Live children, by state", labels=("model", "state")
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight", "Requests a child is serving", labels=("model", "key")
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}_requests_waiting", "Requests queued for a child", labels=("model", "key")
        )
        memory = GaugeMetricFamily(
            f"{PREFIX}_memory_bytes",
            "What a child counts for against its device's budget (its need, or its measured use when larger)",
            labels=("model", "key", "device"),
        )
        counts: dict[tuple[str, str], int] = {}
        for sidecar in pool.sidecars():
            model = sidecar.spec.model
            counts[model, sidecar.state.value] = counts.get((model, sidecar.state.value), 0) + 1
            serving, queued = pool.leases(sidecar.key)
            in_flight.add_metric((model, sidecar.key), serving)
            waiting.add_metric((model, sidecar.key), queued)
            for device, amount in (pool.counted_bytes(sidecar.key) or {}).items():
                memory.add_metric((model, sidecar.key, device), amount)
        for (model, state), count in counts.items():
            children.add_metric((model, state), count)
        budget = GaugeMetricFamily(
            f"{PREFIX}_memory_budget_bytes",
            "Memory the pool may give children, per device",
            labels=("device",),
        )
        for device, amount in pool.memory.budgets().items():
            budget.add_metric((device,), amount)
        total = GaugeMetricFamily(
            f"{PREFIX}_memory_device_bytes", "A device's total memory", labels=("device",)
        )
        for device, amount in pool.memory.totals().items():
            total.add_metric((device,), amount)
        yield from (children, in_flight, waiting, memory, budget, total)
        if pool.kv is not None and pool.kv.unavailable is None:
            used = GaugeMetricFamily(f"{PREFIX}_kv_cache_store_bytes", "Saved slots on disk, all keys")
            used.add_metric((), pool.kv.index.used_bytes)
            allowed = GaugeMetricFamily(
                f"{PREFIX}_kv_cache_store_budget_bytes", "kv_cache.disk_budget, in bytes"
            )
            allowed.add_metric((), pool.kv.budget())
            yield from (used, allowed)
