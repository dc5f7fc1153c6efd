"""`orchestrator bench overhead | cold | sweep`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from orchestrator.bench.cold import ColdPlan, measure_cold, render_cold
from orchestrator.bench.overhead import OverheadPlan, measure_overhead, render_overhead
from orchestrator.bench.swapcache import SwapCachePlan, measure_swap_cache, render_swap_cache
from orchestrator.bench.sweep import SweepPlan, parse_variants, run_sweep
from orchestrator.bench.target import Target, attached_daemon, daemon_document, spawned_daemon
from orchestrator.clisupport import load_cli_config, run_trio
from orchestrator.config import Config
from orchestrator.errors import BenchError


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


@asynccontextmanager
async def _target(args: argparse.Namespace, document: Callable[[], dict[str, Any]]) -> AsyncIterator[Target]:
    """The daemon at --url, or one started for this run from ``document()``."""
    if args.url:
        yield await attached_daemon(args.url.rstrip("/"), args.key)
        return
    async with spawned_daemon(document()) as target:
        _say(f"started a daemon at {target.url} (pid {target.pid})")
        yield target


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n", "utf-8")
        _say(f"wrote {path}")


def _model_name(args: argparse.Namespace, names: list[str]) -> str:
    if args.model:
        return str(args.model)
    if args.url:
        raise BenchError(f"name the model or agent to measure on {args.url} with --model")
    if not names:
        raise BenchError("the config has no models")
    return names[0]


def cmd_overhead(args: argparse.Namespace) -> int:
    config = None if args.url else load_cli_config(args.config)
    model = _model_name(args, list(config.models) if config else [])
    if (args.compare_direct or args.compare_pid is not None) and not args.compare:
        raise BenchError(
            "--compare-direct and --compare-pid describe the --compare server: give --compare URL"
        )
    if args.compare_pid is not None and not psutil.pid_exists(args.compare_pid):
        raise BenchError(f"--compare-pid {args.compare_pid}: no such process on this machine")
    plan = OverheadPlan(
        model=model,
        small_requests=args.requests,
        streams=args.streams,
        stream_tokens=args.tokens,
        concurrency=args.concurrency,
        compare_url=args.compare,
        compare_model=args.compare_model,
        compare_direct_url=args.compare_direct,
        compare_pid=args.compare_pid,
        api=args.api,
    )

    async def run() -> dict[str, Any]:
        assert config is not None or args.url
        # A second, idle child too: the daemon's memory is reported with two children.
        models = {model: [], f"{model}@idle": ["--threads", "1"]} if config else {}
        async with _target(args, lambda: daemon_document(config, models)) as target:  # type: ignore[arg-type]
            if config:
                await _preload(target, f"{model}@idle")
            return await measure_overhead(target, plan, _say)

    report = run_trio(run)
    print(render_overhead(report))
    _write_json(args.json, report)
    return 0


async def _preload(target: Target, name: str) -> None:
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        response = await client.post(f"{target.url}/api/models/{name}/load", headers=dict(target.headers))
        if response.status_code != 200:
            raise BenchError(f"{name} did not start: {response.text[:300]}")


def cmd_cold(args: argparse.Namespace) -> int:
    if args.prompt_tokens:
        return _swap_cache(args)
    config = None if args.url else load_cli_config(args.config)
    names = list(config.models) if config else []
    first = _model_name(args, names)
    second = args.swap_with or (names[1] if len(names) > 1 else f"{first}@b")
    plan = ColdPlan(first, second, repetitions=args.repeat)

    def document() -> dict[str, Any]:
        assert config is not None
        return daemon_document(config, _pair(config, first, second), pool={"max_sidecars": 1})

    async def run() -> dict[str, Any]:
        async with _target(args, document) as target:
            return await measure_cold(target, plan, _say)

    report = run_trio(run)
    print(render_cold(report))
    _write_json(args.json, report)
    return 0


def _pair(config: Config, first: str, second: str, ctx_size: int | None = None) -> dict[str, list[str]]:
    """A and B for a swap: B is A with a small context when the config has no second model."""
    first_flags = ["--ctx-size", str(ctx_size)] if ctx_size else []
    return {first: first_flags, second: [] if second in config.models else ["--ctx-size", "1024"]}


def _swap_cache(args: argparse.Namespace) -> int:
    if args.url:
        raise BenchError("--prompt-tokens runs two daemons of its own (without and with the KV cache): "
                         "leave out --url")  # fmt: skip
    if args.prompt_tokens < 0:
        raise BenchError(f"--prompt-tokens {args.prompt_tokens}: expected a positive number of tokens")
    config = load_cli_config(args.config)
    names = list(config.models)
    first = _model_name(args, names)
    second = args.swap_with or (names[1] if len(names) > 1 else f"{first}@b")
    plan = SwapCachePlan(first, second, args.prompt_tokens, repetitions=args.repeat)
    # Room for the prompt, the template around it and the answer, in one slot.
    models = _pair(config, first, second, ctx_size=args.prompt_tokens * 2 + 512)
    models[first] += ["--parallel", "1"]

    @asynccontextmanager
    async def start(store: str | None) -> AsyncIterator[Target]:
        kv_cache = {"enabled": True, "dir": store, "min_tokens": 1} if store else None
        document = daemon_document(config, models, pool={"max_sidecars": 1}, kv_cache=kv_cache)
        async with spawned_daemon(document) as target:
            _say(f"started a daemon at {target.url} (pid {target.pid}), KV cache {'on' if store else 'off'}")
            yield target

    report = run_trio(measure_swap_cache, start, plan, _say)
    print(render_swap_cache(report))
    _write_json(args.json, report)
    return 0


def _require_bench_extra() -> None:
    missing = [name for name in ("rich", "matplotlib", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchError(
            f"bench sweep needs {', '.join(missing)}: pip install 'llama-sidecar[bench]' "
            "(ops/install.sh installs it)"
        )


def cmd_sweep(args: argparse.Namespace) -> int:
    _require_bench_extra()
    config = load_cli_config(args.config)
    models = args.models.split(",") if args.models else list(config.models)
    unknown = [name for name in models if name not in config.models]
    if unknown:
        raise BenchError(f"not in the config: {', '.join(unknown)}; it has {', '.join(config.models)}")
    plan = SweepPlan(
        models=tuple(models),
        variants=parse_variants(args.variant),
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        repetitions=args.repeat,
        concurrency=args.concurrency,
        ctx_size=args.ctx_size,
    )
    out = Path(args.out)

    async def run() -> None:
        pool = {"max_sidecars": 1}  # one model at a time: no child competes with the one measured
        async with _target(args, lambda: daemon_document(config, pool=pool)) as target:
            await run_sweep(target, config, plan, out, _say)

    run_trio(run)
    return 0
