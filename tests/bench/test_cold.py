"""`bench cold` on SmolLM2: a cold start split into llama-server's load and the daemon's part, and swaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main


@pytest.mark.real
def test_cold_start_and_swaps_are_measured_and_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "cold.json"
    assert main(["bench", "cold", "--repeat", "2", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["plan"]["first"] == "smollm2" and report["plan"]["second"] == "smollm2@b"
    for phase in ("cold", "swap_to_b", "swap_back_to_a"):
        assert len(report["runs"][phase]) == 2
        for run in report["runs"][phase]:
            assert run["ttft_ms"] > run["llama_load_ms"] > 0
            assert run["spawn_ms"] > 0
            # The /health poll may beat the "listening" line through the pipe by a little, never by much.
            assert -50 <= run["readiness_lag_ms"] < 1000
    warm_ttft, _ = report["warm_ttft_ms"]
    cold_ttft, _ = report["summary"]["cold"]["ttft_ms"]
    assert 0 < warm_ttft < cold_ttft  # a cold start costs a load
    printed = capsys.readouterr().out
    assert "readiness lag" in printed and "swap to smollm2@b" in printed


@pytest.mark.real
def test_a_long_prompt_comes_back_after_a_swap_and_a_restart_only_with_the_kv_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "swap.json"
    argv = ["bench", "cold", "--prompt-tokens", "400", "--repeat", "1", "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    runs = {phase: runs[0] for phase, runs in report["runs"].items()}
    prompt = runs["cold"]["prompt_tokens"]
    assert prompt > 400  # the shared prompt, and the chat template around it
    assert runs["cold"]["cached_tokens"] == runs["swap_back_without"]["cached_tokens"] == 0
    for phase in ("swap_back_with", "after_restart_with"):
        # Everything but the last token, which llama-server always evaluates again.
        assert runs[phase]["cached_tokens"] >= prompt - 1, (phase, runs[phase])
        assert runs[phase]["prompt_tokens"] == prompt
    printed = capsys.readouterr().out
    assert "back after a swap, with the cache" in printed
    assert "against its request to ready plus twice" in printed


def test_a_long_prompt_bench_runs_its_own_daemons(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cold", "--prompt-tokens", "400", "--url", "http://127.0.0.1:9"]) == 1
    assert "leave out --url" in capsys.readouterr().err
