"""Answer extraction and judging, against hand-made replies."""

from __future__ import annotations

import pytest

from orchestrator.evals import scoring


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Let me think. B looks tempting, but A is wrong too.\nAnswer: C", "C"),
        ("answer: c", "C"),
        ("Answer: A\nOn reflection...\nAnswer: D", "D"),  # the last one counts
        ("**Answer: B**", "B"),
        ("The final answer is $\\boxed{\\text{Answer: D}}$", "D"),
        ("Answer: $B$", "B"),
        ("Answer:(A)", "A"),
        ("I think it is B.", None),  # no "Answer:" line: no answer
        ("Answer: E", None),
        ("", None),
    ],
)
def test_mmlu_choice(reply: str, expected: str | None) -> None:
    assert scoring.mmlu_choice(reply) == expected


@pytest.mark.parametrize(
    ("reply", "strict", "flexible"),
    [
        ("She has 16 - 3 - 4 = 9 eggs, so 9 * 2 = 18 dollars.\n#### 18", 18.0, 18.0),
        ("Costs 1,200 dollars plus 34.\n#### 1,234", 1234.0, 1234.0),
        ("#### $18.", 18.0, 18.0),
        ("#### -5", -5.0, -5.0),
        ("Step 1: 3 + 4 = 7. Step 2: 7 * 6 = 42. The answer is 42.", None, 42.0),  # distractors before
        ("The answer is **\\boxed{72}**", None, 72.0),
        ("I do not know.", None, None),
        ("#### 18\nCheck: 2 + 2 = 4", 18.0, 4.0),  # strict follows the marker, flexible the last number
    ],
)
def test_gsm8k_strict_and_flexible(reply: str, strict: float | None, flexible: float | None) -> None:
    assert scoring.gsm8k_strict(reply) == strict
    assert scoring.gsm8k_flexible(reply) == flexible


def test_gsm8k_reference_and_numeric_comparison() -> None:
    assert scoring.gsm8k_reference("so 9 * 2 = $<<9*2=18>>18.\n#### 18") == 18.0
    assert scoring.same_number(18.0, 18) and scoring.same_number(0.5, 0.50)
    assert not scoring.same_number(None, 18) and not scoring.same_number(18.5, 18)
    with pytest.raises(ValueError, match="without '#### N'"):
        scoring.gsm8k_reference("no marker")


PROMPT = 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"


@pytest.mark.parametrize(
    ("reply", "how"),
    [
        ("Here you go:\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```\nDone.", "fenced"),
        ("```\ndef add(a, b):\n    return a + b\n```", "fenced"),
        ("    return a + b\n", "bare"),  # a completion of the body, as base models give
    ],
)
def test_humaneval_code_is_extracted_and_the_program_built(reply: str, how: str) -> None:
    assert scoring.extract_code(reply).how == how
    program = scoring.humaneval_program(PROMPT, reply, TEST, "add")
    namespace: dict[str, object] = {}
    exec(compile(program, "program.py", "exec"), namespace)  # the tests call check(add) and pass
    assert program.rstrip().endswith("check(add)")


def test_wilson_interval() -> None:
    low, high = scoring.wilson_interval(50, 100)
    assert low == pytest.approx(0.404, abs=0.001) and high == pytest.approx(0.596, abs=0.001)
    low, high = scoring.wilson_interval(0, 3)
    assert low == 0.0 and high == pytest.approx(0.562, abs=0.001)
    assert scoring.wilson_interval(0, 0) == (0.0, 0.0)
