"""The SQLite store: stable run names, one row per question, resume, lookup by prefix."""

from __future__ import annotations

from pathlib import Path

from orchestrator.evals.store import Answer, Store, run_id


def answer(question_id: str, correct: bool) -> Answer:
    return Answer(question_id, "algebra", "Q?", "A.", "A", correct, {"x": 1}, 0.5, 10, 3,
                  {"predicted_n": 3}, {"temperature": 0})  # fmt: skip


def test_runs_are_named_after_their_settings() -> None:
    settings = {"suite_version": "v1", "where": "local", "max_tokens": 512, "temperature": 0.0}
    assert run_id("mmlu", "smollm2", settings) == run_id("mmlu", "smollm2", dict(reversed(settings.items())))
    assert run_id("mmlu", "smollm2", settings) != run_id("mmlu", "smollm2", {**settings, "max_tokens": 256})
    assert run_id("mmlu", "org/model:q4", settings).startswith("mmlu-org_model_q4-")


def test_answers_are_kept_across_reopenings_and_resume_skips_them(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open_run("mmlu-m-1", "mmlu", "m", {"a": 1})
    store.record("mmlu-m-1", answer("q1", True))
    store.record("mmlu-m-1", answer("q2", False))
    store.close()

    reopened = Store(tmp_path)
    reopened.open_run("mmlu-m-1", "mmlu", "m", {"a": 1})  # the same command again: the same run
    assert reopened.answered("mmlu-m-1") == {"q1", "q2"}
    [run] = reopened.runs()
    assert (run["id"], run["answered"], run["correct"], run["settings"]) == ("mmlu-m-1", 2, 1, {"a": 1})
    rows = reopened.answers("mmlu-m-1")
    assert [r["question_id"] for r in rows] == ["q1", "q2"]
    assert rows[0]["correct"] is True and rows[0]["timings"] == {"predicted_n": 3}
    assert reopened.find_run("mmlu-m") == run and reopened.find_run("nope") is None
    reopened.close()
