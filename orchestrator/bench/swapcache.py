"""`bench cold --prompt-tokens N`: what a swap costs an agent with a long shared prompt, with and without
the KV cache kept across swaps.

Two daemons in one run, each a pool of one with models A and B. Without the
cache (kv_cache off): A cold, A warm (its prompt cached in the live child),
B, then A back: the whole prompt processed again. With the cache (on, in a
scratch store): A, B, then A back with its saved slots restored before it is
ready; then that daemon restarts on the same store and A is asked once more.
Every phase records the child's own ``timings.cache_n``: how much of the
prompt it found already processed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.bench.cold import ask, cold_report, cold_start, wait_empty
from orchestrator.bench.summary import fmt
from orchestrator.bench.sweep import prompt_text
from orchestrator.bench.target import Target

# A daemon for the run: with the KV cache kept in the given store, or (None) without it.
StartDaemon = Callable[[str | None], AbstractAsyncContextManager[Target]]

PHASES = (
    ("cold", "cold (nothing cached)"),
    ("swap_back_without", "back after a swap, without the cache"),
    ("swap_back_with", "back after a swap, with the cache"),
    ("after_restart_with", "after a daemon restart, with the cache"),
)


@dataclass(frozen=True)
class SwapCachePlan:
    first: str  # model A, the agent with the long prompt
    second: str  # model B, swapped in between
    prompt_tokens: int
    repetitions: int = 1


async def measure_swap_cache(
    start: StartDaemon, plan: SwapCachePlan, say: Callable[[str], None] = lambda _text: None
) -> dict[str, Any]:
    """Cold, warm, and back after a swap without and with the saved cache, and after a restart."""
    system = prompt_text(plan.prompt_tokens)
    runs: dict[str, list[dict[str, float]]] = {phase: [] for phase, _ in PHASES}
    warm: list[float] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=1800), trust_env=False) as client:
        async with start(None) as target:
            for repetition in range(plan.repetitions):
                say(f"without the cache, {repetition + 1}/{plan.repetitions}: cold {plan.first}, warm, "
                    f"{plan.second}, {plan.first} again")  # fmt: skip
                await target.evict_all(client)
                await wait_empty(client, target)
                runs["cold"].append(await cold_start(client, target, plan.first, system))
                warm.append((await ask(client, target, plan.first, system)).ttft_s * 1000)
                await cold_start(client, target, plan.second)
                runs["swap_back_without"].append(await cold_start(client, target, plan.first, system))
        with tempfile.TemporaryDirectory(prefix="llama-sidecar-kv-") as store:
            async with start(store) as target:
                for repetition in range(plan.repetitions):
                    say(f"with the cache, {repetition + 1}/{plan.repetitions}: {plan.first}, {plan.second}, "
                        f"{plan.first} again")  # fmt: skip
                    await ask(client, target, plan.first, system)  # the prompt in A's slot (restored or not)
                    await cold_start(client, target, plan.second)  # A saved on its way out
                    runs["swap_back_with"].append(await cold_start(client, target, plan.first, system))
            say(f"the daemon restarted on the same store: {plan.first} again")
            async with start(store) as target:
                runs["after_restart_with"].append(await cold_start(client, target, plan.first, system))
    return cold_report(plan, runs, warm)


def render_swap_cache(report: dict[str, Any]) -> str:
    """A markdown table per phase, and back with the cache against its own request to ready plus twice
    the warm time to first token."""
    summary = report["summary"]
    plan = report["plan"]
    lines = [
        f"{plan['first']} with a {plan['prompt_tokens']}-token shared prompt, swapped with {plan['second']}:",
        "",
        "| | time to first token (ms) | request to ready (ms) | prompt tokens found cached |",
        "|---|---|---|---|",
    ]
    for phase, title in PHASES:
        figures = summary[phase]
        lines.append(
            f"| {title} | {fmt(figures['ttft_ms'][0], 1)} ± {fmt(figures['ttft_ms'][1], 1)} "
            f"| {fmt(figures['ready_ms'][0], 1)} | {figures['cached_tokens'][0]:.0f} "
            f"of {figures['prompt_tokens'][0]:.0f} |"
        )
    warm = report["warm_ttft_ms"][0]
    lines.append(f"| warm (the child alive) | {fmt(warm, 1)} ± {fmt(report['warm_ttft_ms'][1], 1)} | | |")
    back = summary["swap_back_with"]
    restore = back["ready_ms"][0] - summary["swap_back_without"]["ready_ms"][0]
    bound = back["ready_ms"][0] + 2 * warm
    lines += [
        "",
        f"Back with the cache: {fmt(back['ttft_ms'][0], 1)} ms, against its request to ready plus twice the "
        f"warm time to first token: {fmt(bound, 1)} ms (the restore and its check added about "
        f"{fmt(restore, 1)} ms to the start). After a restart: "
        f"{fmt(summary['after_restart_with']['ttft_ms'][0], 1)} ms.",
        f"{plan['repetitions']} repetitions; {report['machine']}.",
    ]
    return "\n".join(lines)
