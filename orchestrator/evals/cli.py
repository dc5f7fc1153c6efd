"""The `eval` command line: its parser here, its commands in evals.commands, imported only when
one runs (so that `orchestrator serve` does not load the HTTP client and the tools' modules)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from orchestrator.clisupport import lazy_handler
from orchestrator.evals.suites import SUITES

DEFAULT_RESULTS = "eval-results"

_COMMANDS = "orchestrator.evals.commands"


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
    run.set_defaults(handler=lazy_handler(_COMMANDS, "cmd_run"))

    report = tools.add_parser("report", help="accuracy with 95%% intervals (no RUN: list the runs)")
    report.add_argument("runs", nargs="*", metavar="RUN", help="run names (or unique prefixes)")
    report.add_argument("--format", choices=("md", "json", "html"), default="md")
    report.add_argument("--results", default=DEFAULT_RESULTS, help=f"results ({DEFAULT_RESULTS})")
    report.set_defaults(handler=lazy_handler(_COMMANDS, "cmd_report"))

    ab = tools.add_parser("ab", help="the A/B prompt set on several models or agents, side by side")
    ab.add_argument("--models", required=True, help="comma-separated model or agent names (two or more)")
    ab.add_argument("--prompts", help="a prompt file (TOML; default: the shipped set)")
    common(ab)
    ab.set_defaults(handler=lazy_handler(_COMMANDS, "cmd_ab"))
