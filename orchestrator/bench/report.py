"""The sweep's outputs from its records: CSV (one row per cell), a markdown table, and a PNG chart."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.bench.summary import fmt, mean_std, ratio

if TYPE_CHECKING:
    from orchestrator.bench.sweep import SweepPlan

CSV_FIELDS = (
    "cell", "model", "variant", "concurrency", "repetition", "status", "reason", "prompt_tokens_per_s",
    "gen_tokens_per_s", "client_gen_tokens_per_s", "aggregate_tokens_per_s", "ttft_ms", "itl_p50_ms",
    "itl_p99_ms", "draft_acceptance", "wall_s", "variant_flags", "argv",
)  # fmt: skip


def groups(records: Sequence[dict[str, Any]], plan: SweepPlan) -> list[dict[str, Any]]:
    """One row per (model, variant, concurrency) in plan order: status, means ± stddevs, speedup."""
    rows = []
    baseline = plan.variants[0].name
    for model in plan.models:
        for concurrency in plan.concurrency:
            gen_of: dict[str, float] = {}
            for variant in plan.variants:
                mine = [r for r in records if (r["model"], r["variant"], r["concurrency"])
                        == (model, variant.name, concurrency)]  # fmt: skip
                ok = [r for r in mine if r["status"] == "ok"]
                row: dict[str, Any] = {"model": model, "variant": variant.name, "concurrency": concurrency,
                                       "runs": len(ok)}  # fmt: skip
                if not ok:
                    row["status"] = mine[0]["status"] if mine else "not run"
                    row["reason"] = mine[0].get("reason", "") if mine else ""
                    rows.append(row)
                    continue
                row["status"] = "ok"
                for name in ("gen_tokens_per_s", "prompt_tokens_per_s", "aggregate_tokens_per_s", "ttft_ms",
                             "itl_p50_ms", "itl_p99_ms"):  # fmt: skip
                    row[name] = mean_std([r[name] for r in ok if r.get(name) is not None])
                acceptance = [r["draft_acceptance"] for r in ok if r.get("draft_acceptance") is not None]
                row["draft_acceptance"] = mean_std(acceptance)[0] if acceptance else None
                gen_of[variant.name] = row["gen_tokens_per_s"][0]
                row["speedup"] = ratio(row["gen_tokens_per_s"][0], gen_of.get(baseline, math.nan))
                rows.append(row)
    return rows


def _pm(pair: tuple[float, float], digits: int = 1) -> str:
    return f"{fmt(pair[0], digits)} ± {fmt(pair[1], digits)}"


def markdown(rows: Sequence[dict[str, Any]], plan: SweepPlan) -> str:
    header = ("| model | variant | c | runs | gen tok/s | prompt tok/s | TTFT ms | ITL p50 ms | ITL p99 ms "
              "| draft acceptance | speedup |")  # fmt: skip
    lines = [
        f"pp{plan.prompt_tokens} / tg{plan.output_tokens}, {plan.repetitions} repetitions, prompt cache off; "
        f"speedup is generation tokens/s against {plan.variants[0].name}.",
        "",
        header,
        "|---" * 11 + "|",
    ]
    for row in rows:
        start = f"| {row['model']} | {row['variant']} | {row['concurrency']} | {row['runs']} |"
        if row["status"] != "ok":
            lines.append(f"{start} {row['status']}: {row.get('reason', '')} |" + " |" * 6)
            continue
        acceptance = "-" if row["draft_acceptance"] is None else f"{row['draft_acceptance']:.2f}"
        lines.append(
            f"{start} {_pm(row['gen_tokens_per_s'])} | {_pm(row['prompt_tokens_per_s'])} | "
            f"{_pm(row['ttft_ms'])} | {_pm(row['itl_p50_ms'], 2)} | {_pm(row['itl_p99_ms'], 2)} | "
            f"{acceptance} | {fmt(row['speedup'], 2)}x |"
        )
    return "\n".join(lines) + "\n"


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            flat = {**record, "variant_flags": " ".join(record.get("variant_flags", [])),
                    "argv": " ".join(record.get("argv", []))}  # fmt: skip
            writer.writerow(flat)


def chart(rows: Sequence[dict[str, Any]], plan: SweepPlan, path: Path) -> None:
    """Generation tokens/s per model (groups) and variant (bars), error bars at one stddev."""
    import matplotlib  # the bench extra: imported here so that other commands start fast

    matplotlib.use("Agg")
    from matplotlib import pyplot

    levels = plan.concurrency
    size = (max(6.0, 2.2 * len(plan.models)) * len(levels), 4.5)
    figure, axes = pyplot.subplots(1, len(levels), figsize=size, squeeze=False)
    width = 0.8 / len(plan.variants)
    for axis, concurrency in zip(axes[0], levels, strict=True):
        for index, variant in enumerate(plan.variants):
            means, errors = [], []
            for model in plan.models:
                [row] = [r for r in rows if (r["model"], r["variant"], r["concurrency"])
                         == (model, variant.name, concurrency)]  # fmt: skip
                mean, sd = row.get("gen_tokens_per_s", (0.0, 0.0))
                means.append(0.0 if math.isnan(mean) else mean)
                errors.append(0.0 if math.isnan(sd) else sd)
            positions = [m + index * width - 0.4 + width / 2 for m in range(len(plan.models))]
            axis.bar(positions, means, width, yerr=errors, capsize=3, label=variant.name)
        axis.set_xticks(range(len(plan.models)), plan.models, rotation=15)
        axis.set_ylabel("generation tokens/s")
        axis.set_title(f"tg{plan.output_tokens}, concurrency {concurrency}")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def write_reports(records: Sequence[dict[str, Any]], plan: SweepPlan, out: Path) -> list[Path]:
    """results.csv, results.md and tokens_per_s.png in ``out``; the paths written."""
    rows = groups(records, plan)
    csv_path, md_path, png_path = out / "results.csv", out / "results.md", out / "tokens_per_s.png"
    write_csv(records, csv_path)
    md_path.write_text(markdown(rows, plan), "utf-8")
    chart(rows, plan, png_path)
    return [csv_path, md_path, png_path]
