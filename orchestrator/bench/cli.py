"""The `bench` command line: its parser here, its commands in bench.commands, imported only when
one runs (so that `orchestrator serve` does not load the HTTP client and the tools' modules)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from orchestrator.clisupport import lazy_handler

_COMMANDS = "orchestrator.bench.commands"


def _integers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 1,4,16, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_bench_parser(commands: Any) -> None:
    """Register `bench` and its three tools on the top-level subcommands."""
    bench = commands.add_parser("bench", help="benchmarks: proxy overhead, cold starts, throughput sweep")
    tools = bench.add_subparsers(dest="bench_command", required=True, metavar="TOOL")

    def common(parser: argparse.ArgumentParser, *, attach: bool = True) -> None:
        parser.add_argument("--config", metavar="PATH", help="models from this config (default: the demo)")
        if attach:
            parser.add_argument("--url", help="use the daemon running at URL instead of starting one")
            parser.add_argument(
                "--key", default=os.environ.get("ORCHESTRATOR_KEY"), help="its key ($ORCHESTRATOR_KEY)"
            )
        parser.add_argument("--json", metavar="PATH", help="also write the full report as JSON")

    overhead = tools.add_parser("overhead", help="the proxy's cost against the same child reached directly")
    common(overhead)
    overhead.add_argument("--model", help="model or agent to measure (default: the first configured)")
    overhead.add_argument("--requests", type=int, default=100, help="small requests per endpoint (100)")
    overhead.add_argument("--streams", type=int, default=12, help="streams per endpoint (12)")
    overhead.add_argument("--tokens", type=int, default=64, help="tokens per stream (64)")
    overhead.add_argument("--concurrency", type=_integers, default=(1, 4, 16), help="levels (1,4,16)")
    overhead.add_argument("--compare", metavar="URL", help="another OpenAI-compatible server, same model")
    overhead.add_argument("--compare-model", metavar="NAME", help="the model's name there")
    overhead.add_argument(
        "--compare-direct", metavar="URL", help="that server's own child, for its added latency against it"
    )
    overhead.add_argument(
        "--compare-pid", type=int, metavar="PID", help="that server's pid, for its CPU and memory"
    )
    overhead.add_argument(
        "--api", choices=("openai", "ollama"), default="openai",
        help="the route measured through the daemon: OpenAI's chat (default) or Ollama's /api/chat",
    )  # fmt: skip
    overhead.set_defaults(handler=lazy_handler(_COMMANDS, "cmd_overhead"))

    cold = tools.add_parser("cold", help="cold start to first token, readiness lag, and A -> B -> A swaps")
    common(cold)
    cold.add_argument("--model", help="model A (default: the first configured)")
    cold.add_argument(
        "--swap-with", metavar="NAME", help="model B (default: the second, or A with other flags)"
    )
    cold.add_argument("--repeat", type=int, default=3, help="repetitions (3)")
    cold.add_argument(
        "--prompt-tokens", type=int, default=0, metavar="N",
        help="an agent's shared prompt of about N tokens: cold, warm, and back after a swap without and "
        "with the saved KV cache, and after a restart (two daemons of its own; not with --url)",
    )  # fmt: skip
    cold.set_defaults(handler=lazy_handler(_COMMANDS, "cmd_cold"))

    sweep = tools.add_parser("sweep", help="throughput across models and flag variants, resumable")
    common(sweep)
    sweep.add_argument("--models", help="comma-separated model names (default: every configured model)")
    sweep.add_argument(
        "--variant",
        action="append",
        metavar="NAME=FLAGS",
        help='a named flag set, e.g. baseline= or "mtp=--spec-type draft-mtp --spec-draft-n-max 3" '
        "(repeatable; default: baseline only)",
    )
    sweep.add_argument("--prompt-tokens", type=int, default=512, help="prompt length (512)")
    sweep.add_argument("--output-tokens", type=int, default=128, help="tokens generated (128)")
    sweep.add_argument("--repeat", type=int, default=3, help="repetitions per cell (3)")
    sweep.add_argument("--concurrency", type=_integers, default=(1,), help="levels (1)")
    sweep.add_argument("--ctx-size", type=int, help="override --ctx-size on every model")
    sweep.add_argument("--out", default="bench-results", help="results directory (bench-results)")
    sweep.set_defaults(handler=lazy_handler(_COMMANDS, "cmd_sweep"))
