"""The A/B prompt set: the shipped file, user files with mistakes, and every kind of check."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.evals.ab import Prompt, ab_markdown, check_reply, load_prompts


def test_the_shipped_set_has_14_agent_typed_prompts_with_checks() -> None:
    prompts, version = load_prompts()
    assert len(prompts) == 14 and len({p.type for p in prompts}) == 14
    assert all(p.check.get("kind") for p in prompts)
    [recall] = [p for p in prompts if p.id == "long-context-recall"]
    assert len(recall.text) > 8000 and recall.text.count("7391") == 1 and "{filler}" not in recall.text
    assert len(version) == 12 and load_prompts()[1] == version  # a digest of the file: stable


def test_a_prompt_file_with_mistakes_reports_every_one(tmp_path: Path) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(
        '[[prompt]]\nid = "a"\ntype = "t"\nprompt = "p"\ncheck = { kind = "telepathy" }\n'
        '[[prompt]]\nid = "b"\ntype = "t"\n'
        '[[prompt]]\nid = "c"\ntype = "t"\nprompt = "p"\n'
        '[[prompt]]\nid = "c"\ntype = "t"\nprompt = "p"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_prompts(path)
    problems = "\n".join(refused.value.problems)
    assert "prompt #1 (a): check.kind must be one of code, json, contains, regex, nonempty" in problems
    assert "prompt #2: expected string fields id, type and prompt" in problems
    assert "prompt id 'c' is used twice" in problems
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="cannot read the prompts"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("check", "reply", "passed"),
    [
        (
            {"kind": "json", "keys": ["name", "age"]},
            'Sure:\n```json\n{"name": "Maria", "age": 34}\n```',
            True,
        ),
        ({"kind": "json", "keys": ["name", "age"]}, '{"name": "Maria"}', False),
        ({"kind": "json"}, "no json here", False),
        ({"kind": "contains", "any": ["negative"]}, "Negative.", True),
        ({"kind": "contains", "any": ["7391"]}, "I could not find it.", False),
        ({"kind": "regex", "pattern": r"wc\s+-l"}, "find . -name '*.py' | xargs wc -l", True),
        ({"kind": "nonempty"}, "   ", False),
        (
            {"kind": "code", "test": "assert double(2) == 4"},
            "```python\ndef double(x):\n    return 2 * x\n```",
            True,
        ),
        (
            {"kind": "code", "test": "assert double(2) == 4"},
            "```python\ndef double(x):\n    return x\n```",
            False,
        ),
        ({}, "anything", None),
    ],
)
async def test_checks(check: dict[str, object], reply: str, passed: bool | None) -> None:
    result, why = await check_reply(check, reply)
    assert result is passed, why
    assert why


def answer_row(reply: str, check: bool | None, latency_s: float) -> dict[str, object]:
    verdict = {"check": check, "why": "because"}
    return {"reply": reply, "latency_s": latency_s, "completion_tokens": 12,
            "timings": {"predicted_per_second": 40.0}, "verdict": verdict}  # fmt: skip


def test_the_markdown_report_sets_outputs_side_by_side_under_each_prompt() -> None:
    prompts = [Prompt("code", "code generation", "Write it."), Prompt("chat", "chat", "Hi.")]
    fenced_reply = "Here:\n```python\nprint(1)\n```"  # 28 characters
    results = {
        "a": {"code": answer_row(fenced_reply, True, 1.5), "chat": answer_row("Hello!", None, 0.5)},
        "b": {"code": answer_row("no idea", False, 2.5)},
    }
    report = ab_markdown(prompts, results)
    assert "| a | 1/1 | 1.00 s | 40.0 | 17 chars |" in report  # summary: checks, latency, speed, length
    code_row = "| code | code generation | pass, 1.50 s, 12 tokens, 40.0 tok/s, 28 chars | FAIL, 2.50 s,"
    assert code_row in report
    assert "| chat | chat | -, 0.50 s, 12 tokens, 40.0 tok/s, 6 chars | not run |" in report
    outputs = report.split("## Outputs", 1)[1]
    assert outputs.index("### code") < outputs.index("**a**: pass") < outputs.index("**b**: FAIL")
    assert "**b**: not run" in outputs.split("### chat", 1)[1]
    assert f"````text\n{fenced_reply}\n````" in outputs  # a fence longer than the reply's own
    assert "## Outputs" not in ab_markdown(prompts, results, outputs=False)
