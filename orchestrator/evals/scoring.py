"""Extracting and judging answers: the conventions the field compares against. Pure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MMLU_ANSWER = re.compile(r"(?i)Answer[ \t]*:[ \t]*\$?\(?\**([A-D])\b")
GSM8K_STRICT = re.compile(r"#### *\$?(-?[0-9][0-9.,]*)")
NUMBER = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?")
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def _unwrap(text: str) -> str:
    """Drop markdown emphasis and LaTeX boxing that models put around final answers."""
    text = re.sub(r"\\boxed\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    return text.replace("**", "").replace("\\(", "").replace("\\)", "")


def mmlu_choice(reply: str) -> str | None:
    """The letter after the last ``Answer: X`` (case-insensitive, markdown and LaTeX tolerated)."""
    found = MMLU_ANSWER.findall(_unwrap(reply))
    return found[-1].upper() if found else None


def normalise_number(text: str) -> float | None:
    """'1,234.50' or '$18' or '18.' to a float; None if it is not a number."""
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def gsm8k_strict(reply: str) -> float | None:
    """The number after the last ``#### `` marker."""
    found = GSM8K_STRICT.findall(_unwrap(reply))
    return normalise_number(found[-1]) if found else None


def gsm8k_flexible(reply: str) -> float | None:
    """The last number anywhere in the reply."""
    found = NUMBER.findall(_unwrap(reply))
    return normalise_number(found[-1]) if found else None


def same_number(answer: float | None, reference: float) -> bool:
    return answer is not None and math.isclose(answer, reference, rel_tol=1e-9, abs_tol=1e-9)


def gsm8k_reference(solution: str) -> float:
    """The reference answer: the number after ``####`` in the dataset's solution."""
    value = gsm8k_strict(solution)
    if value is None:
        raise ValueError(f"a GSM8K solution without '#### N': {solution[-80:]!r}")
    return value


@dataclass(frozen=True)
class ExtractedCode:
    code: str
    how: str  # "fenced", "bare"


def extract_code(reply: str) -> ExtractedCode:
    """The program text in a reply: the first fenced block that defines something, else the whole reply."""
    blocks = FENCE.findall(reply)
    for block in blocks:
        if "def " in block or "return" in block:
            return ExtractedCode(block, "fenced")
    if blocks:
        return ExtractedCode(blocks[0], "fenced")
    return ExtractedCode(reply, "bare")


def humaneval_program(prompt: str, reply: str, test: str, entry_point: str) -> str:
    """The program the field runs: the prompt and completion (or the reply's own full function), tests, check.

    A chat model usually answers with the whole function; its definition then
    replaces the prompt's stub (the prompt still comes first for its imports).
    """
    code = extract_code(reply).code
    # The prompt's stub has a docstring for a body, so it is valid on its own; a later def wins.
    separator = "\n" if f"def {entry_point}" in code else ""
    return f"{prompt}{separator}{code}\n\n{test}\n\ncheck({entry_point})\n"


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval for a proportion (0, 0 for no trials)."""
    if total == 0:
        return 0.0, 0.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
