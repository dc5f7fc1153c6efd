"""Eval reports: accuracy and its 95% interval per run; per subject for MMLU; strict and flexible GSM8K."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.evals.scoring import wilson_interval


def summarise(run: dict[str, Any], answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one run."""
    total = len(answers)
    correct = sum(1 for a in answers if a["correct"])
    low, high = wilson_interval(correct, total)
    summary: dict[str, Any] = {
        "run": run["id"],
        "suite": run["suite"],
        "model": run["model"],
        "settings": run["settings"],
        "answered": total,
        "correct": correct,
        "accuracy": correct / total if total else 0.0,
        "ci95": [low, high],
        "mean_latency_s": sum(a["latency_s"] for a in answers) / total if total else 0.0,
        "completion_tokens": sum(a["completion_tokens"] or 0 for a in answers),
    }
    if run["suite"] == "gsm8k":
        flexible = sum(1 for a in answers if a["verdict"].get("flexible_correct"))
        summary["flexible_correct"] = flexible
        summary["flexible_accuracy"] = flexible / total if total else 0.0
        summary["flexible_ci95"] = list(wilson_interval(flexible, total))
    if run["suite"] == "mmlu":
        by_subject: dict[str, list[bool]] = defaultdict(list)
        for answer in answers:
            by_subject[answer["subject"]].append(answer["correct"])
        summary["subjects"] = {
            subject: {"answered": len(marks), "correct": sum(marks)}
            for subject, marks in sorted(by_subject.items())
        }
    if run["suite"] == "humaneval":
        statuses: dict[str, int] = defaultdict(int)
        for answer in answers:
            statuses[answer["verdict"].get("status", "?")] += 1
        summary["statuses"] = dict(statuses)
    return summary


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _interval(pair: Sequence[float]) -> str:
    return f"[{_percent(pair[0])}, {_percent(pair[1])}]"


@dataclass(frozen=True)
class Table:
    """One table of a report, rendered as markdown or HTML."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def tables(summaries: Sequence[dict[str, Any]]) -> list[Table]:
    """Every table of a report: accuracy per run, then MMLU per subject and HumanEval outcomes."""
    rows = []
    for s in summaries:
        rows.append((s["run"], s["suite"], s["model"], str(s["answered"]), _percent(s["accuracy"]),
                     _interval(s["ci95"]), f"{s['mean_latency_s']:.2f} s"))  # fmt: skip
        if "flexible_accuracy" in s:
            rows.append((f"{s['run']} (flexible)", "gsm8k", s["model"], str(s["answered"]),
                         _percent(s["flexible_accuracy"]), _interval(s["flexible_ci95"]), ""))  # fmt: skip
    header = ("run", "suite", "model", "answered", "accuracy", "95% interval", "mean latency")
    result = [Table("", header, tuple(rows))]
    for s in summaries:
        if "subjects" in s:
            subjects = tuple((name, f"{v['correct']} / {v['answered']}") for name, v in s["subjects"].items())
            result.append(Table(f"MMLU by subject ({s['run']})", ("subject", "correct / answered"), subjects))
        if "statuses" in s:
            outcomes = tuple((status, str(count)) for status, count in sorted(s["statuses"].items()))
            result.append(Table(f"HumanEval outcomes ({s['run']})", ("outcome", "programs"), outcomes))
    return result


def markdown(summaries: Sequence[dict[str, Any]]) -> str:
    lines: list[str] = []
    for table in tables(summaries):
        if table.title:
            lines += ["", f"{table.title}:", ""]
        lines += ["| " + " | ".join(table.header) + " |", "|---" * len(table.header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}"
        "pre{white-space:pre-wrap;max-width:60ch;margin:0}.pass{color:#080}.fail{color:#b00}"
        f"</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _html_row(cells: Sequence[str], tag: str) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for cell in cells) + "</tr>"


def html_report(summaries: Sequence[dict[str, Any]]) -> str:
    body = ""
    for table in tables(summaries):
        if table.title:
            body += f"<h2>{html.escape(table.title)}</h2>"
        cells = [_html_row(table.header, "th"), *(_html_row(row, "td") for row in table.rows)]
        body += "<table>" + "".join(cells) + "</table>\n"
    return html_page("llama-sidecar eval report", body)


def render(summaries: Sequence[dict[str, Any]], form: str) -> str:
    if form == "json":
        return json.dumps(list(summaries), indent=2) + "\n"
    if form == "html":
        return html_report(summaries)
    return markdown(summaries)
