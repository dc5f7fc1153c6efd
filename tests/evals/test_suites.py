"""The suites' data and samples: from the installed packages, fixed by a seed, versioned."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import DataMissingError
from orchestrator.evals.suites import Gsm8k, HumanEval, Mmlu, package_file


def test_mmlu_samples_100_of_the_14042_questions_the_same_way_every_time() -> None:
    questions = Mmlu().questions()
    assert len(questions) == 100 and len({q.id for q in questions}) == 100
    assert [q.id for q in questions] == [q.id for q in Mmlu().questions()]
    assert all(q.reference in "ABCD" and q.subject for q in questions)
    assert len({q.subject for q in questions}) > 20  # drawn from the whole set, not one subject
    first = questions[0]
    assert 'finish with a line of the form "Answer: X"' in first.prompt
    assert "\nA. " in first.prompt and "\nD. " in first.prompt
    all_indices = [int(q.id.split("-")[1]) for q in questions]
    assert max(all_indices) < 14042 and all_indices == sorted(all_indices)


def test_gsm8k_samples_50_questions_with_numeric_references() -> None:
    questions = Gsm8k().questions()
    assert len(questions) == 50 and len({q.id for q in questions}) == 50
    assert all(float(q.reference) == float(q.reference) for q in questions)  # parseable, not NaN
    assert '"#### N"' in questions[0].prompt


def test_humaneval_has_all_164_problems_with_their_tests() -> None:
    questions = HumanEval().questions()
    assert len(questions) == 164
    assert questions[0].id == "HumanEval/0" and questions[-1].id == "HumanEval/163"
    assert all({"prompt", "test", "entry_point"} <= set(q.extra) for q in questions)
    assert "```python" in questions[0].prompt


def test_a_missing_data_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="'no_such_eval_package' is not installed: pip install x"):
        package_file("no_such_eval_package", "data.jsonl", "pip install x")
    with pytest.raises(DataMissingError, match="is missing; reinstall it"):
        package_file("orchestrator", "data/no-such-file.jsonl", "pip install x")
