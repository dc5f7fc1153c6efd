"""Reports: accuracy with a 95% interval, per subject, strict and flexible; markdown, JSON and HTML."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest

from orchestrator.evals.report import render, summarise

VOID = {"meta", "br", "img", "hr", "input", "link"}


class TagBalance(HTMLParser):
    """Fails on any closing tag that does not match the innermost open one; ends with nothing open."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def assert_valid_html(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    checker = TagBalance()
    checker.feed(page)
    checker.close()
    assert checker.open == []


def rows(suite: str, marks: list[bool], **verdict: Any) -> list[dict[str, Any]]:
    return [
        {
            "correct": mark,
            "subject": f"s{i % 2}",
            "latency_s": 1.0,
            "completion_tokens": 5,
            "verdict": verdict,
        }
        for i, mark in enumerate(marks)
    ]


def test_gsm8k_summary_has_strict_and_flexible_accuracy_with_intervals() -> None:
    run = {"id": "gsm8k-m-1", "suite": "gsm8k", "model": "m", "settings": {}}
    summary = summarise(run, rows("gsm8k", [True, False, False, False], flexible_correct=True))
    assert summary["accuracy"] == 0.25 and summary["flexible_accuracy"] == 1.0
    low, high = summary["ci95"]
    assert 0 < low < 0.25 < high < 1
    text = render([summary], "md")
    assert "| gsm8k-m-1 | gsm8k | m | 4 | 25.0% |" in text and "(flexible)" in text
    assert json.loads(render([summary], "json"))[0]["correct"] == 1


def test_mmlu_summary_is_broken_down_by_subject_and_renders_as_valid_html() -> None:
    run = {"id": "mmlu-m-1", "suite": "mmlu", "model": "m<script>", "settings": {}}
    summary = summarise(run, rows("mmlu", [True, True, False]))
    assert summary["subjects"] == {"s0": {"answered": 2, "correct": 1}, "s1": {"answered": 1, "correct": 1}}
    assert "| s0 | 1 / 2 |" in render([summary], "md")
    page = render([summary], "html")
    assert_valid_html(page)
    assert "m&lt;script&gt;" in page and "<script>" not in page
    assert "<h2>MMLU by subject (mmlu-m-1)</h2>" in page and "<td>s0</td><td>1 / 2</td>" in page


def test_humaneval_outcomes_and_gsm8k_flexible_rows_are_in_every_format() -> None:
    humaneval = summarise({"id": "he-1", "suite": "humaneval", "model": "m", "settings": {}},
                          rows("humaneval", [True, False], status="failed"))  # fmt: skip
    gsm8k = summarise({"id": "g-1", "suite": "gsm8k", "model": "m", "settings": {}},
                      rows("gsm8k", [False, False], flexible_correct=True))  # fmt: skip
    text = render([humaneval, gsm8k], "md")
    assert "HumanEval outcomes (he-1):\n\n| outcome | programs |\n|---|---|\n| failed | 2 |" in text
    assert "| g-1 (flexible) | gsm8k | m | 2 | 100.0% |" in text
    page = render([humaneval, gsm8k], "html")
    assert_valid_html(page)
    assert "<td>failed</td><td>2</td>" in page and "<td>g-1 (flexible)</td>" in page


def test_an_empty_run_reports_zero_not_an_error() -> None:
    summary = summarise({"id": "r", "suite": "humaneval", "model": "m", "settings": {}}, [])
    assert summary["accuracy"] == 0.0 and summary["ci95"] == [0.0, 0.0]
    assert summary["statuses"] == {} and pytest.approx(0.0) == summary["mean_latency_s"]
