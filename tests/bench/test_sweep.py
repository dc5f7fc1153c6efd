"""The sweep: variants, cells, resumable results, MTP support from GGUF metadata; on SmolLM2."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import trio

from orchestrator.bench.sweep import (
    Cell,
    SweepPlan,
    Variant,
    cells,
    load_results,
    parse_variants,
    unsupported_reason,
)
from orchestrator.errors import BenchError
from tests.conftest import wait_until

MTP = Variant("mtp", ("--spec-type", "draft-mtp", "--spec-draft-n-max", "3"))


def test_variants_parse_from_name_equals_flags_and_must_be_unique() -> None:
    assert parse_variants(None) == (Variant("baseline"),)
    assert parse_variants(["baseline=", "q8kv=-ctk q8_0 -ctv q8_0"]) == (
        Variant("baseline"),
        Variant("q8kv", ("-ctk", "q8_0", "-ctv", "q8_0")),
    )
    with pytest.raises(BenchError, match="expected NAME=FLAGS"):
        parse_variants(["--spec-type draft-mtp"])
    with pytest.raises(BenchError, match="unique"):
        parse_variants(["a=", "a=-t 1"])


def test_cells_keep_one_model_and_variant_together() -> None:
    plan = SweepPlan(("m1", "m2"), (Variant("a"), Variant("b")), repetitions=2, concurrency=(1, 4))
    ids = [cell.id for cell in cells(plan)]
    assert len(ids) == len(set(ids)) == 2 * 2 * 2 * 2
    assert ids[:4] == ["m1|a|c1|r0", "m1|a|c1|r1", "m1|a|c4|r0", "m1|a|c4|r1"]
    assert Cell("m", Variant("v"), 16, 3).id == "m|v|c16|r3"


def test_a_line_cut_by_an_interruption_is_dropped_and_the_file_repaired(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    assert load_results(path) == []
    path.write_text('{"cell": "a"}\n{"cell": "b"}\n{"cell": "c", "gen_tok')
    assert [r["cell"] for r in load_results(path)] == ["a", "b"]
    assert path.read_text() == '{"cell": "a"}\n{"cell": "b"}\n'  # the next append starts a clean line


def write_gguf(path: Path, architecture: str, nextn_layers: int | None) -> str:
    writer = gguf.GGUFWriter(str(path), architecture)
    if nextn_layers is not None:
        writer.add_uint32(f"{architecture}.nextn_predict_layers", nextn_layers)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_mtp_is_skipped_with_the_reason_on_a_gguf_without_nextn_layers(tmp_path: Path) -> None:
    plain = write_gguf(tmp_path / "plain.gguf", "llama", None)
    with_mtp = write_gguf(tmp_path / "mtp.gguf", "qwen3", 1)
    reason = unsupported_reason(MTP, plain)
    assert reason is not None and "llama.nextn_predict_layers" in reason
    assert unsupported_reason(MTP, with_mtp) is None
    assert unsupported_reason(Variant("q8kv", ("-ctk", "q8_0")), plain) is None  # nothing to check
    with_draft = Variant("mtp", (*MTP.flags, "--spec-draft-model", "/d.gguf"))
    assert unsupported_reason(with_draft, plain) is None  # a draft model instead of nextn layers


def sweep_command(out: Path) -> list[str]:
    # Four variants x 2 repetitions on SmolLM2, short: pp64 / tg16.
    return [
        sys.executable, "-m", "orchestrator", "bench", "sweep",
        "--variant", "baseline=", "--variant", "t1=-t 1",
        "--variant", "mtp=--spec-type draft-mtp --spec-draft-n-max 3", "--variant", "bad=--ctx-size lots",
        "--prompt-tokens", "64", "--output-tokens", "16", "--repeat", "2", "--out", str(out),
    ]  # fmt: skip


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.real
async def test_sweep_on_smollm2_resumes_after_an_interruption_without_gaps_or_duplicates(
    tmp_path: Path,
) -> None:
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = await trio.lowlevel.open_process(sweep_command(out), env=env, stderr=subprocess.DEVNULL)
    try:
        # Interrupt once two cells are on disk, as Ctrl-C would.
        await wait_until(lambda: (out / "results.jsonl").exists() and len(records(out)) >= 2, timeout_s=120)
        first.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    done_before = len(records(out))
    assert 2 <= done_before < 8
    rerun = await trio.run_process(sweep_command(out), capture_stderr=True, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert f"{done_before} cells done, {8 - done_before} to run" in rerun.stderr.decode()

    results = records(out)
    ids = [str(r["cell"]) for r in results]
    expected = [f"smollm2|{v}|c1|r{r}" for v in ("baseline", "t1", "mtp", "bad") for r in (0, 1)]
    assert sorted(ids) == sorted(expected)  # no gaps, no duplicates
    for record in results:
        if record["variant"] == "mtp":  # SmolLM2 has no nextn layers
            assert record["status"] == "skipped" and "nextn" in str(record["reason"])
            continue
        if record["variant"] == "bad":  # refused by the daemon's flag check: reported, not a crash
            assert record["status"] == "failed" and "--ctx-size" in str(record["reason"])
            continue
        assert record["status"] == "ok"
        for field in ("prompt_tokens_per_s", "gen_tokens_per_s", "client_gen_tokens_per_s", "ttft_ms"):
            value = record[field]
            assert isinstance(value, float) and value > 0, (field, record)
        assert record["prompt_n"] == [pytest.approx(64, abs=16)]  # about the length asked for
        argv = record["argv"]
        assert isinstance(argv, list) and "--model" in argv
        assert ("-t" in argv or "--threads" in argv) == (record["variant"] == "t1")

    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 8 and {row["status"] for row in rows} == {"ok", "skipped", "failed"}
    table = (out / "results.md").read_text()
    assert "| smollm2 | t1 | 1 | 2 |" in table and "x |" in table  # mean ± sd and a speedup
    assert "skipped: MTP needs nextn layers" in table
    assert (out / "tokens_per_s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
