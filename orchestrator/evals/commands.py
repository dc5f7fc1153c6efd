"""`orchestrator eval run | report | ab`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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

DEFAULT_RESULTS = "eval-results"


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


def add_eval_parser(commands: Any) -> None:
    """Register `eval` and its subcommands on the top-level subcommands."""
    evaluate = commands.add_parser("eval", help="accuracy evals (MMLU, GSM8K, HumanEval) and A/B comparisons")
    tools = evaluate.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", help="an OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (default: the "
                            "daemon of --config, started for the run if it is not running)")  # fmt: skip
        parser.add_argument(
            "--key", default=os.environ.get("ORCHESTRATOR_KEY"), help="API key ($ORCHESTRATOR_KEY)"
        )
        parser.add_argument("--config", metavar="PATH", help="the daemon's config (default: the demo)")
        parser.add_argument("--concurrency", type=int, default=1, help="questions in flight at once (1)")
        parser.add_argument("--max-tokens", type=int, help="per answer (default: each suite's own)")
        parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0)")
        parser.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
        parser.add_argument(
            "--results", default=DEFAULT_RESULTS, help=f"results directory ({DEFAULT_RESULTS})"
        )

    run = tools.add_parser("run", help="run a suite; the same command again resumes it")
    run.add_argument("--suite", required=True, choices=[*SUITES, "all"])
    run.add_argument("--model", required=True, help="model or agent name")
    run.add_argument("--limit", type=int, help="only the first N questions of the sample")
    run.add_argument("--timeout-s", type=float, default=3.0, help="HumanEval: seconds per program (3)")
    common(run)
    run.set_defaults(handler=cmd_run)

    report = tools.add_parser("report", help="accuracy with 95%% intervals (no RUN: list the runs)")
    report.add_argument("runs", nargs="*", metavar="RUN", help="run names (or unique prefixes)")
    report.add_argument("--format", choices=("md", "json", "html"), default="md")
    report.add_argument("--results", default=DEFAULT_RESULTS, help=f"results ({DEFAULT_RESULTS})")
    report.set_defaults(handler=cmd_report)

    ab = tools.add_parser("ab", help="the A/B prompt set on several models or agents, side by side")
    ab.add_argument("--models", required=True, help="comma-separated model or agent names (two or more)")
    ab.add_argument("--prompts", help="a prompt file (TOML; default: the shipped set)")
    common(ab)
    ab.set_defaults(handler=cmd_ab)
