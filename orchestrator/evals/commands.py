"""`orchestrator eval run | report | ab`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from orchestrator.bench.target import spawned_daemon
from orchestrator.clisupport import load_cli_config, run_trio
from orchestrator.errors import CommandError
from orchestrator.evals.ab import DEFAULT_PROMPTS, AbSuite, ab_html, ab_markdown
from orchestrator.evals.report import render, summarise
from orchestrator.evals.runner import Endpoint, RunResult, Sampling, run_suite
from orchestrator.evals.sandbox import Limits
from orchestrator.evals.store import DATABASE, Store
from orchestrator.evals.suites import SUITES, HumanEval, Suite


def _say(text: str) -> None:
    print(f"eval: {text}", file=sys.stderr, flush=True)


async def _answers(base: str) -> bool:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        try:
            return (await client.get(f"{base}/health")).status_code == 200
        except httpx.TransportError:
            return False  # nothing listens there


@asynccontextmanager
async def endpoint_for(args: argparse.Namespace) -> AsyncIterator[Endpoint]:
    """--url as given; else the daemon of the config if it is running, else one started for this run."""
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    if args.url:
        url = args.url.rstrip("/")
        yield Endpoint(url, url, headers)
        return
    config = load_cli_config(args.config)
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::", "") else config.server.host
    base = f"http://{host}:{config.server.port}"
    if await _answers(base):
        _say(f"using the daemon at {base}")
        yield Endpoint(f"{base}/v1", "local", headers)
        return
    async with spawned_daemon(config_path=args.config, headers=headers) as target:
        _say(f"no daemon at {base}; started one at {target.url} for this run")
        yield Endpoint(f"{target.url}/v1", "local", headers)


def _store(args: argparse.Namespace) -> Store:
    directory = Path(args.results)
    _say(f"results in {directory.resolve()}")
    return Store(directory)


def _sampling(args: argparse.Namespace) -> Sampling:
    return Sampling(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)


def _report_errors(results: list[RunResult]) -> int:
    errors = [error for result in results for error in result.errors]
    for error in errors[:5]:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"error: {len(errors)} questions got no answer; run the same command again to retry them",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    names = list(SUITES) if args.suite == "all" else [args.suite]
    suites: list[Suite] = [
        HumanEval(Limits(timeout_s=args.timeout_s)) if name == "humaneval" else SUITES[name]()
        for name in names
    ]
    store = _store(args)

    async def run() -> list[RunResult]:
        results = []
        async with endpoint_for(args) as endpoint:
            for suite in suites:
                result = await run_suite(
                    store, suite, endpoint, args.model,
                    sampling=_sampling(args), concurrency=args.concurrency, limit=args.limit,
                )  # fmt: skip
                _say(f"{result.run_id}: asked {result.asked}, {result.skipped} already answered")
                results.append(result)
        return results

    try:
        results = run_trio(run)
        summaries = [summarise(store.find_run(r.run_id) or {}, store.answers(r.run_id)) for r in results]
        print(render(summaries, "md"), end="")
    finally:
        store.close()
    return _report_errors(results)


def cmd_report(args: argparse.Namespace) -> int:
    directory = Path(args.results)
    if not (directory / DATABASE).is_file():
        raise CommandError(f"no eval results in {directory.resolve()}; `orchestrator eval run` writes them")
    store = Store(directory)
    try:
        if not args.runs:
            for run in store.runs():
                print(f"{run['id']}  {run['answered']} answered, {run['correct']} correct")
            return 0
        summaries = []
        for name in args.runs:
            found = store.find_run(name)
            if found is None:
                known = ", ".join(r["id"] for r in store.runs()) or "none yet"
                raise CommandError(
                    f"no run (or more than one) matches {name!r} in {store.path}; runs: {known}"
                )
            summaries.append(summarise(found, store.answers(found["id"])))
        print(render(summaries, args.format), end="")
    finally:
        store.close()
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    if len(models) < 2:
        raise CommandError(f"--models needs at least two names separated by commas, got {args.models!r}")
    suite = AbSuite(DEFAULT_PROMPTS if args.prompts is None else Path(args.prompts))
    store = _store(args)

    async def run() -> list[RunResult]:
        results = []
        async with endpoint_for(args) as endpoint:
            for model in models:
                result = await run_suite(
                    store, suite, endpoint, model, sampling=_sampling(args), concurrency=args.concurrency
                )
                results.append(result)
        return results

    try:
        results = run_trio(run)
        answers = {
            model: {row["question_id"]: row for row in store.answers(result.run_id)}
            for model, result in zip(models, results, strict=True)
        }
        markdown_path, html_path = Path(args.results) / "ab-report.md", Path(args.results) / "ab-report.html"
        markdown_path.write_text(ab_markdown(suite.prompts, answers), "utf-8")
        html_path.write_text(ab_html(suite.prompts, answers), "utf-8")
        print(ab_markdown(suite.prompts, answers, outputs=False), end="")  # the replies: in the files
        _say(f"wrote {markdown_path} and {html_path}")
    finally:
        store.close()
    return _report_errors(results)
