"""Eval results in SQLite: one row per (run, question), written as each answer is scored.

A run is named after its suite, model and settings, so the same command
always lands in the same run and skips what it has already answered.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE = "evals.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    model TEXT NOT NULL,
    settings TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(id),
    question_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    prompt TEXT NOT NULL,
    reply TEXT NOT NULL,
    extracted TEXT,
    correct INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    latency_s REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    timings TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, question_id)
);
"""


def run_id(suite: str, model: str, settings: Mapping[str, Any]) -> str:
    """``suite-model-digest``: equal settings, equal name."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    safe_model = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
    return f"{suite}-{safe_model}-{digest}"


@dataclass(frozen=True)
class Answer:
    question_id: str
    subject: str
    prompt: str
    reply: str
    extracted: str | None
    correct: bool
    verdict: Mapping[str, Any]
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: Mapping[str, Any]
    params: Mapping[str, Any]


class Store:
    """One SQLite file under the results directory. Blocking: call it from a worker thread."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DATABASE
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(SCHEMA)
        self._db.execute("PRAGMA journal_mode=WAL")  # a kill mid-write leaves every committed row intact

    def close(self) -> None:
        self._db.close()

    def open_run(self, identifier: str, suite: str, model: str, settings: Mapping[str, Any]) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?)",
                (identifier, suite, model, json.dumps(settings, sort_keys=True), time.time()),
            )

    def answered(self, identifier: str) -> set[str]:
        rows = self._db.execute("SELECT question_id FROM results WHERE run_id = ?", (identifier,))
        return {row[0] for row in rows}

    def record(self, identifier: str, answer: Answer) -> None:
        with self._db:  # one transaction per answer: a crash loses only answers in flight
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    identifier, answer.question_id, answer.subject, answer.prompt, answer.reply,
                    answer.extracted, int(answer.correct), json.dumps(answer.verdict), answer.latency_s,
                    answer.prompt_tokens, answer.completion_tokens, json.dumps(answer.timings),
                    json.dumps(answer.params), time.time(),
                ),
            )  # fmt: skip

    def runs(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT runs.*, COUNT(results.question_id) AS answered, "
            "COALESCE(SUM(results.correct), 0) AS correct FROM runs "
            "LEFT JOIN results ON results.run_id = runs.id GROUP BY runs.id ORDER BY runs.created"
        )
        return [{**dict(row), "settings": json.loads(row["settings"])} for row in rows]

    def find_run(self, name: str) -> dict[str, Any] | None:
        """A run by its name or a unique prefix of it."""
        matches = [run for run in self.runs() if run["id"] == name or run["id"].startswith(name)]
        exact = [run for run in matches if run["id"] == name]
        return (exact or matches)[0] if len(exact) == 1 or len(matches) == 1 else None

    def answers(self, identifier: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM results WHERE run_id = ? ORDER BY question_id", (identifier,))
        return [
            {**dict(row), "correct": bool(row["correct"]), "verdict": json.loads(row["verdict"]),
             "timings": json.loads(row["timings"]), "params": json.loads(row["params"])}
            for row in rows
        ]  # fmt: skip
