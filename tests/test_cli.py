"""The command line: config check, ps and evict against a running daemon."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from orchestrator.bundled import LlamaServerBinary
from orchestrator.cli import main
from tests.conftest import make_config, running_daemon


def test_config_check_ok_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "ok.toml").write_text('[models.m]\npath = "m.gguf"\n')
    assert main(["config", "check", str(tmp_path / "ok.toml")]) == 0
    assert "ok (1 models, 0 agents)" in capsys.readouterr().out

    (tmp_path / "bad.toml").write_text(
        '[models.m]\npath = "m.gguf"\nflags = ["--host", "0.0.0.0"]\n[pool]\nmax_sidecars = -1\n'
    )
    assert main(["config", "check", str(tmp_path / "bad.toml")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"error: {tmp_path / 'bad.toml'}: ") for line in err)


def test_doctor_reports_a_working_binary_and_a_failing_one(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def config_with(model: str) -> str:
        path = tmp_path / "doctor.toml"
        path.write_text(f'[llama_server]\nbin = "{fake_binary.path}"\n[models.m]\npath = "{model}"\n')
        return str(path)

    assert main(["doctor", "--config", config_with(fake_model("good"))]) == 0
    out = capsys.readouterr().out
    assert f"llama-server: {fake_binary.path} (config)" in out
    assert "ok: ready in" in out

    assert main(["doctor", "--config", config_with(fake_model("bad", exit_during_load=3))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: llama-server exited while loading (exit code 3)")
    assert "fake: failed to load model" in err
    assert "Traceback" not in err


def test_ps_without_a_daemon_is_a_short_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ps", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the daemon at http://127.0.0.1:9" in capsys.readouterr().err


async def test_ps_and_evict_against_a_running_daemon(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, agents={"coder": {"model": "m"}})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient() as client:
        body = {"model": "coder", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
        assert await trio.to_thread.run_sync(partial(main, ["ps", "--url", url])) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == [
            "KEY",
            "MODEL",
            "STATE",
            "PORT",
            "PID",
            "IN-FLIGHT",
            "RESTARTS",
            "UP",
            "IDLE",
            "AGENTS",
        ]
        assert out[1].split()[1:3] == ["m", "ready"]
        assert sorted(out[1].split()[-1].split(",")) == ["coder", "m"]
        assert out[-1] == "1/2 sidecars, 0 evictions"

        assert await trio.to_thread.run_sync(partial(main, ["evict", "--url", url, "m"])) == 0
        assert capsys.readouterr().out.startswith("stopped ")
        assert (await client.get(f"{url}/api/sidecars")).json()["sidecars"] == []
        assert await trio.to_thread.run_sync(partial(main, ["evict", "--url", url, "m"])) == 1
        assert "no sidecar match 'm'" in capsys.readouterr().err
