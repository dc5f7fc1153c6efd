"""`bench sweep`: throughput across models and named flag variants, resumable cell by cell.

A cell is one (model, variant, concurrency, repetition). Each finished cell is
one line appended to ``results.jsonl`` (flushed and synced), so an interrupted
sweep loses at most the cell in progress, and a rerun skips every cell already
recorded. Variants reach the daemon as per-request flags (``llama_flags``), so
the daemon starts one child per (model, variant) and the sweep needs no config
of its own.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import trio

from orchestrator.bench import measure
from orchestrator.bench.report import write_reports
from orchestrator.bench.summary import percentile
from orchestrator.bench.target import Target
from orchestrator.config import Config
from orchestrator.errors import BenchError, RequestFailed

RESULTS = "results.jsonl"
MTP_SPEC_TYPES = ("draft-mtp", "mtp")


@dataclass(frozen=True)
class Variant:
    name: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepPlan:
    models: tuple[str, ...]
    variants: tuple[Variant, ...] = (Variant("baseline"),)
    prompt_tokens: int = 512
    output_tokens: int = 128
    repetitions: int = 3
    concurrency: tuple[int, ...] = (1,)
    ctx_size: int | None = None


@dataclass(frozen=True)
class Cell:
    model: str
    variant: Variant
    concurrency: int
    repetition: int

    @property
    def id(self) -> str:
        return f"{self.model}|{self.variant.name}|c{self.concurrency}|r{self.repetition}"


def parse_variants(specs: Sequence[str] | None) -> tuple[Variant, ...]:
    """``NAME=FLAGS`` strings to variants (the first is the baseline); default: one empty baseline."""
    if not specs:
        return (Variant("baseline"),)
    variants = []
    for spec in specs:
        name, separator, flags = spec.partition("=")
        if not separator or not name.strip():
            raise BenchError(f"--variant {spec!r}: expected NAME=FLAGS, e.g. 'q8kv=-ctk q8_0 -ctv q8_0'")
        variants.append(Variant(name.strip(), tuple(shlex.split(flags))))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise BenchError(f"--variant names must be unique, got {', '.join(names)}")
    return tuple(variants)


def cells(plan: SweepPlan) -> list[Cell]:
    """Every cell, grouped so that one child serves all the cells of a (model, variant)."""
    return [
        Cell(model, variant, concurrency, repetition)
        for model in plan.models
        for variant in plan.variants
        for concurrency in plan.concurrency
        for repetition in range(plan.repetitions)
    ]


def load_results(path: Path) -> list[dict[str, Any]]:
    """The records written so far; a line cut short by an interruption is dropped from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):  # the cell in progress when the run stopped: it runs again
        path.write_bytes(complete)
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def append_result(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as results:
        results.write(json.dumps(record) + "\n")
        results.flush()
        os.fsync(results.fileno())


@cache
def gguf_metadata(path: str) -> dict[str, Any]:
    """The GGUF's scalar metadata (architecture, nextn layers, ...), read with the gguf package."""
    import gguf  # the bench extra, with numpy: imported here so that other commands start fast

    reader = gguf.GGUFReader(path)
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if len(field.types) == 1 and field.types[0] != gguf.GGUFValueType.ARRAY:
            metadata[name] = field.contents()
    return metadata


def unsupported_reason(variant: Variant, model_path: str) -> str | None:
    """Why ``variant`` cannot run on this GGUF (None: it can), e.g. MTP without nextn layers."""
    flags = list(variant.flags)
    wants_mtp = any(
        flag == "--spec-type" and index + 1 < len(flags) and flags[index + 1] in MTP_SPEC_TYPES
        for index, flag in enumerate(flags)
    )
    has_draft_model = any(flag in ("-md", "--spec-draft-model", "--model-draft") for flag in flags)
    if not wants_mtp or has_draft_model:
        return None
    try:
        metadata = gguf_metadata(model_path)
    except (OSError, ValueError) as error:
        return f"cannot read the GGUF's metadata to check for MTP layers: {error}"
    architecture = metadata.get("general.architecture", "?")
    layers = metadata.get(f"{architecture}.nextn_predict_layers", 0)
    if not layers:
        return (
            f"MTP needs nextn layers; this GGUF ({architecture}) has no {architecture}.nextn_predict_layers"
        )
    return None


def prompt_text(tokens: int) -> str:
    """About ``tokens`` tokens of plain text (the exact count is recorded from the child's timings)."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "wizards", "judge"]
    return " ".join(words[i % len(words)] for i in range(tokens))


def request_body(plan: SweepPlan, cell: Cell) -> dict[str, Any]:
    flags = list(cell.variant.flags) + (["--ctx-size", str(plan.ctx_size)] if plan.ctx_size else [])
    body: dict[str, Any] = {
        "model": cell.model,
        "prompt": prompt_text(plan.prompt_tokens),
        "max_tokens": plan.output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "cache_prompt": False,  # every repetition processes the whole prompt
    }
    if flags:
        body["llama_flags"] = flags
    return body


async def run_cell(client: httpx.AsyncClient, target: Target, plan: SweepPlan, cell: Cell) -> dict[str, Any]:
    """``concurrency`` identical requests at once; per-request figures and the cell's aggregate."""
    samples: list[measure.StreamSample] = []
    failures: list[str] = []

    async def one() -> None:
        url = f"{target.url}/v1/completions"
        try:
            samples.append(await measure.stream(client, url, request_body(plan, cell), dict(target.headers)))
        except (RequestFailed, httpx.HTTPError) as error:  # the cell fails; the sweep goes on
            failures.append(str(error) or type(error).__name__)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(cell.concurrency):
            nursery.start_soon(one)
    wall = time.perf_counter() - started
    if failures:
        raise RequestFailed(f"{len(failures)} of {cell.concurrency} requests failed: {failures[0]}")

    def timing(name: str) -> list[float]:
        return [float(s.timings[name]) for s in samples if name in s.timings]

    gaps = [gap * 1000 for s in samples for gap in s.gaps_s]
    drafted, accepted = sum(timing("draft_n")), sum(timing("draft_n_accepted"))
    return {
        "prompt_n": timing("prompt_n"),
        "cache_n": timing("cache_n"),
        "prompt_tokens_per_s": _mean(timing("prompt_per_second")),
        "gen_tokens_per_s": _mean(timing("predicted_per_second")),
        "client_gen_tokens_per_s": _mean([s.tokens_per_s for s in samples]),
        "aggregate_tokens_per_s": sum(s.chunks for s in samples) / wall,
        "ttft_ms": _mean([s.ttft_s * 1000 for s in samples]),
        "itl_p50_ms": percentile(gaps, 0.5),
        "itl_p99_ms": percentile(gaps, 0.99),
        "draft_n": drafted,
        "draft_n_accepted": accepted,
        "draft_acceptance": accepted / drafted if drafted else None,
        "wall_s": wall,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


async def _argv_of(client: httpx.AsyncClient, target: Target, model: str) -> list[str]:
    """The exact command line of the child that served ``model`` most recently."""
    serving = [s for s in await target.sidecars(client) if s["model"] == model]
    return list(max(serving, key=lambda s: s["last_used"])["argv"]) if serving else []


async def run_sweep(
    target: Target, config: Config, plan: SweepPlan, out: Path, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Run every cell not yet in ``out/results.jsonl``, then write the reports; all records."""
    await trio.Path(out).mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    records = await trio.to_thread.run_sync(load_results, results_path)
    done = {record["cell"] for record in records}
    todo = [cell for cell in cells(plan) if cell.id not in done]
    say(f"results in {out}: {len(done)} cells done, {len(todo)} to run")
    from rich.progress import Progress  # the bench extra: imported here so that other commands start fast

    with Progress(disable=not sys.stderr.isatty(), transient=False) as progress:
        bar = progress.add_task("sweep", total=len(done) + len(todo), completed=len(done))
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=1800), trust_env=False) as client:
            for cell in todo:
                progress.update(bar, description=cell.id)
                record = await _run_recorded(client, target, config, plan, cell)
                await trio.to_thread.run_sync(append_result, results_path, record)
                records.append(record)
                progress.advance(bar)
                if progress.disable:
                    say(f"{cell.id}: {record['status']}")
    written = await trio.to_thread.run_sync(write_reports, records, plan, out)
    say("wrote " + ", ".join(str(path) for path in written))
    return records


async def _run_recorded(
    client: httpx.AsyncClient, target: Target, config: Config, plan: SweepPlan, cell: Cell
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "cell": cell.id,
        "model": cell.model,
        "variant": cell.variant.name,
        "variant_flags": list(cell.variant.flags),
        "concurrency": cell.concurrency,
        "repetition": cell.repetition,
        "prompt_tokens": plan.prompt_tokens,
        "output_tokens": plan.output_tokens,
        "ctx_size": plan.ctx_size,
        "ts": time.time(),
    }
    model_path = config.models[cell.model].path
    reason = await trio.to_thread.run_sync(unsupported_reason, cell.variant, model_path)
    if reason is not None:
        return {**record, "status": "skipped", "reason": reason}
    try:
        figures = await run_cell(client, target, plan, cell)
    except RequestFailed as error:
        return {**record, "status": "failed", "reason": str(error)}
    return {**record, "status": "ok", **figures, "argv": await _argv_of(client, target, cell.model)}
