"""A/B comparison: the same agent-typed prompts to several models (or agents), outputs side by side.

The prompt set ships in ``orchestrator/data/ab-prompts.toml`` (users may pass
their own, same format). Each prompt is a question of an "ab" suite whose
version is a digest of the prompt file, so answers are stored and resumed like
any suite's, per model.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.evals import scoring
from orchestrator.evals.report import html_page
from orchestrator.evals.sandbox import DEFAULT_LIMITS, Limits, run_program
from orchestrator.evals.suites import Question, Suite, Verdict

# Shipped in the wheel as package data (pyproject.toml), found wherever the package is installed.
DEFAULT_PROMPTS: Traversable = resources.files("orchestrator").joinpath("data", "ab-prompts.toml")
CHECK_KINDS = ("code", "json", "contains", "regex", "nonempty")


@dataclass(frozen=True)
class Prompt:
    id: str
    type: str
    text: str
    check: Mapping[str, Any] = field(default_factory=dict)


def _filler(count: int, start: int) -> str:
    return "\n".join(
        f"Note {n}: the delivery on day {n} arrived on time and nothing unusual happened."
        for n in range(start, start + count)
    )


def load_prompts(path: Path | Traversable = DEFAULT_PROMPTS) -> tuple[list[Prompt], str]:
    """The prompts in a TOML file, and a digest of the file (the suite's version); every problem at once."""
    try:
        raw = path.read_bytes()
        document = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError([f"{path}: cannot read the prompts: {error}"]) from error
    prompts, problems = [], []
    for index, entry in enumerate(document.get("prompt", [])):
        where = f"{path}: prompt #{index + 1}"
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("id", "type", "prompt")
        ):
            problems.append(f"{where}: expected string fields id, type and prompt")
            continue
        check = entry.get("check", {})
        if check and check.get("kind") not in CHECK_KINDS:
            problems.append(f"{where} ({entry['id']}): check.kind must be one of {', '.join(CHECK_KINDS)}")
            continue
        text, pad = entry["prompt"], int(entry.get("pad", 0))
        for occurrence in range(text.count("{filler}")):
            text = text.replace("{filler}", _filler(pad, 1 + occurrence * pad), 1)
        prompts.append(Prompt(entry["id"], entry["type"], text, check))
    ids = [p.id for p in prompts]
    problems += [
        f"{path}: prompt id {i!r} is used twice" for i in sorted({i for i in ids if ids.count(i) > 1})
    ]
    if not prompts and not problems:
        problems.append(f"{path}: no [[prompt]] entries")
    if problems:
        raise ConfigError(problems)
    return prompts, hashlib.sha256(raw).hexdigest()[:12]


def _json_object(reply: str) -> dict[str, Any] | None:
    """The first JSON object in a reply (fenced or bare)."""
    candidates = [block for block in re.findall(r"```(?:json)?\s*\n(.*?)```", reply, re.DOTALL)]
    start, end = reply.find("{"), reply.rfind("}")
    if start != -1 and end > start:
        candidates.append(reply[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


async def check_reply(
    check: Mapping[str, Any], reply: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[bool | None, str]:
    """(passed, why); passed is None when the prompt has no check."""
    kind = check.get("kind")
    if kind is None:
        return None, "no automatic check"
    if kind == "nonempty":
        return bool(reply.strip()), "a reply" if reply.strip() else "empty reply"
    if kind == "contains":
        wanted = [str(item) for item in check.get("any", [])]
        found = [item for item in wanted if item.lower() in reply.lower()]
        return bool(found), f"contains {found[0]!r}" if found else f"none of {wanted}"
    if kind == "regex":
        matched = re.search(str(check["pattern"]), reply) is not None
        return matched, f"{'matches' if matched else 'does not match'} {check['pattern']}"
    if kind == "json":
        value = _json_object(reply)
        if value is None:
            return False, "no JSON object"
        missing = [key for key in check.get("keys", []) if key not in value]
        return not missing, f"missing keys {missing}" if missing else "valid JSON with the keys"
    code = scoring.extract_code(reply).code
    outcome = await run_program(f"{code}\n\n{check.get('test', '')}\n", limits)
    return outcome.passed, outcome.status if outcome.passed else f"{outcome.status}: {outcome.detail[-200:]}"


class AbSuite(Suite):
    """The prompt set as a suite: one question per prompt, scored by its check."""

    name = "ab"
    max_tokens = 512

    def __init__(self, path: Path | Traversable = DEFAULT_PROMPTS) -> None:
        self.prompts, self.version = load_prompts(path)

    def questions(self) -> list[Question]:
        return [Question(p.id, p.text, "", p.type, {"check": json.dumps(p.check)}) for p in self.prompts]

    async def score(self, question: Question, reply: str) -> Verdict:
        passed, why = await check_reply(json.loads(question.extra["check"]), reply)
        return Verdict(None, bool(passed), {"check": passed, "why": why})


def _tokens_per_s(answer: Mapping[str, Any]) -> float | None:
    timings = answer.get("timings") or {}
    if timings.get("predicted_per_second"):
        return float(timings["predicted_per_second"])
    tokens, latency = answer.get("completion_tokens"), answer.get("latency_s")
    return tokens / latency if tokens and latency else None


def model_summary(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    checked = [a for a in answers if a["verdict"].get("check") is not None]
    speeds = [s for s in (_tokens_per_s(a) for a in answers) if s is not None]
    return {
        "answered": len(answers),
        "checks_passed": sum(1 for a in checked if a["verdict"]["check"]),
        "checks": len(checked),
        "mean_latency_s": sum(a["latency_s"] for a in answers) / len(answers) if answers else 0.0,
        "mean_tokens_per_s": sum(speeds) / len(speeds) if speeds else 0.0,
        "mean_reply_chars": sum(len(a["reply"]) for a in answers) / len(answers) if answers else 0.0,
    }


def _mark(answer: Mapping[str, Any] | None) -> str:
    if answer is None:
        return "not run"
    check = answer["verdict"].get("check")
    return "-" if check is None else ("pass" if check else "FAIL")


def _figures(answer: Mapping[str, Any]) -> str:
    """Latency, tokens, tokens/s and length of one answer."""
    speed = _tokens_per_s(answer)
    rate = f", {speed:.1f} tok/s" if speed else ""
    return (f"{answer['latency_s']:.2f} s, {answer['completion_tokens'] or 0} tokens{rate}, "
            f"{len(answer['reply'])} chars")  # fmt: skip


def _fenced(text: str) -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def ab_markdown(
    prompts: Sequence[Prompt],
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    outputs: bool = True,
) -> str:
    """``results``: model -> prompt id -> answer row. ``outputs``: add every reply, grouped by prompt."""
    models = list(results)
    lines = ["| model | checks passed | mean latency | mean tokens/s | mean reply length |", "|---" * 5 + "|"]
    for model in models:
        s = model_summary(list(results[model].values()))
        lines.append(f"| {model} | {s['checks_passed']}/{s['checks']} | {s['mean_latency_s']:.2f} s | "
                     f"{s['mean_tokens_per_s']:.1f} | {s['mean_reply_chars']:.0f} chars |")  # fmt: skip
    lines += ["", "| prompt | type | " + " | ".join(models) + " |", "|---" * (2 + len(models)) + "|"]
    for prompt in prompts:
        cells = []
        for model in models:
            answer = results[model].get(prompt.id)
            cells.append(_mark(answer) + (f", {_figures(answer)}" if answer else ""))
        lines.append(f"| {prompt.id} | {prompt.type} | " + " | ".join(cells) + " |")
    if outputs:
        lines += ["", "## Outputs"]
        for prompt in prompts:
            lines += ["", f"### {prompt.id} ({prompt.type})"]
            for model in models:
                answer = results[model].get(prompt.id)
                if answer is None:
                    lines += ["", f"**{model}**: not run"]
                    continue
                why = answer["verdict"].get("why", "")
                lines += ["", f"**{model}**: {_mark(answer)} ({why}); {_figures(answer)}", "",
                          _fenced(answer["reply"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def ab_html(prompts: Sequence[Prompt], results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    models = list(results)
    esc = html.escape
    summary_rows = ""
    for model in models:
        s = model_summary(list(results[model].values()))
        summary_rows += (f"<tr><td>{esc(model)}</td><td>{s['checks_passed']}/{s['checks']}</td>"
                         f"<td>{s['mean_latency_s']:.2f} s</td><td>{s['mean_tokens_per_s']:.1f}</td>"
                         f"<td>{s['mean_reply_chars']:.0f}</td></tr>")  # fmt: skip
    body = ("<h2>Summary</h2><table><tr><th>model</th><th>checks passed</th><th>mean latency</th>"
            f"<th>mean tokens/s</th><th>mean reply chars</th></tr>{summary_rows}</table>"
            "<h2>Outputs</h2><table><tr><th>prompt</th>"
            + "".join(f"<th>{esc(m)}</th>" for m in models) + "</tr>")  # fmt: skip
    for prompt in prompts:
        body += (
            f"<tr><td><b>{esc(prompt.id)}</b> ({esc(prompt.type)})<pre>{esc(prompt.text[:600])}</pre></td>"
        )
        for model in models:
            answer = results[model].get(prompt.id)
            if answer is None:
                body += "<td>not run</td>"
                continue
            mark = _mark(answer)
            css = {"pass": "pass", "FAIL": "fail"}.get(mark, "")
            why = esc(str(answer["verdict"].get("why", "")))
            body += f'<td><span class="{css}">{mark}</span> {why}<br>{_figures(answer)}'
            body += f"<pre>{esc(answer['reply'])}</pre></td>"
        body += "</tr>"
    body += "</table>"
    return html_page("llama-sidecar A/B comparison: " + ", ".join(models), body)
