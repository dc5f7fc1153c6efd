"""The command line: config check, ps and evict against a running daemon."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from orchestrator.cli import main
from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, poll_until, running_daemon


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


def test_config_check_warns_about_what_can_never_fit(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    demo_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_DEVICES", "CUDA0:24576:24000")
    config = tmp_path / "orchestrator.toml"
    config.write_text(
        f'[llama_server]\nbin = "{fake_binary.path}"\n'
        '[pool]\nmemory_budget = "200 MiB"\nprompt_cache_mib = 0\n'
        '[pool.gpu_memory_budget]\nCUDA0 = "50 MiB"\n'
        f'[models.small]\npath = "{demo_model}"\nflags = ["-c", "256", "-ngl", "0"]\npin = true\n'
        f'[models.big]\npath = "{demo_model}"\nflags = ["-c", "65536", "-ngl", "0"]\n'
        f'[agents.twin]\nmodel = "small"\nflags = ["--temp", "0.1"]\npin = true\n'
    )
    assert main(["config", "check", str(config)]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"warning: {config}: model 'big' can never start: it is larger than")
    assert "Host: needs" in warnings[0] and "budget 200.0 MiB" in warnings[0] and "[estimate]" in warnings[0]
    assert "pinned children together exceed the budget (Host:" in warnings[1]


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
    assert "  m: the host (no GPU here)\n" in out
    assert "ok: ready in" in out

    assert main(["doctor", "--config", config_with(fake_model("bad", exit_during_load=3))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: llama-server exited while loading (exit code 3)")
    assert "fake: failed to load model" in err
    assert "Traceback" not in err


def test_doctor_prints_each_device_its_budget_and_a_sample_placement(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_DEVICES", "CUDA0:24576:24000,CUDA1:12288:12000")
    path = tmp_path / "doctor.toml"
    path.write_text(
        f'[llama_server]\nbin = "{fake_binary.path}"\n[pool]\nplacement = "pack"\n'
        f'[models.m]\npath = "{fake_model("m")}"\n'
        f'[models.pinned]\npath = "{fake_model("p")}"\ndevices = ["CUDA1"]\n'
    )
    assert main(["doctor", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  CUDA0: 23.0 GiB of 24.0 GiB\n  CUDA1: 11.0 GiB of 12.0 GiB\n" in out
    assert "sample placement (pool.placement = pack; each started in turn):" in out
    assert "  m: CUDA1 (CUDA1 leaves it fullest (pack)" in out  # the smaller GPU: CUDA0 kept whole
    assert "  pinned: as its flags say\n" in out
    assert "ok: ready in" in out


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
            "MEMORY",
            "DEVICES",
            "KV-CACHE",
            "AGENTS",
        ]
        assert out[1].split()[1:3] == ["m", "ready"]
        assert sorted(out[1].split()[-1].split(",")) == ["coder", "m"]
        assert out[-1] == "1 sidecars, 0 evictions"  # no count cap: memory decides
        assert out[1].split()[-4].startswith("Host:")  # what it counts against the host budget
        assert out[1].split()[-3] == "cpu"  # no GPU here
        assert out[1].split()[-2] == "-"  # no KV cache saved yet: it has not been stopped

        assert await trio.to_thread.run_sync(partial(main, ["evict", "--url", url, "coder"])) == 0  # an agent
        assert capsys.readouterr().out.startswith("stopped ")
        assert (await client.get(f"{url}/api/sidecars")).json()["sidecars"] == []
        assert await trio.to_thread.run_sync(partial(main, ["evict", "--url", url, "m"])) == 1
        err = capsys.readouterr().err
        assert "HTTP 404: no live sidecar matches 'm'" in err and "running: none" in err


def test_flags_check_prints_canonical_flags_or_every_problem(
    fake_binary: LlamaServerBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "flags",
                "check",
                "--bin",
                fake_binary.path,
                "--",
                "-fa",
                "-c",
                "4096",
                "--spec-type",
                "draft-mtp",
            ]
        )
        == 0
    )
    canonical, key = capsys.readouterr().out.splitlines()
    assert canonical == "--ctx-size 4096 --flash-attn on --spec-type draft-mtp"
    assert key.startswith("key: ") and len(key.split()[1]) == 16

    assert (
        main(["flags", "check", "--bin", fake_binary.path, "--", "--port", "1", "-c", "x", "--ctx-sise", "2"])
        == 1
    )
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: --port is set by the supervisor (host, port, model, aliases, API keys, TLS, logging, "
        "metrics and print-and-exit flags are owned); remove it",
        "error: -c: expected an integer, got 'x'",
        "error: --ctx-sise is not a flag of this llama-server; did you mean --ctx-size?",
    ]
    assert main(["flags", "check", "--request", "--bin", fake_binary.path, "--", "--lora", "x.gguf"]) == 1
    assert "names a file on the server" in capsys.readouterr().err


def test_flags_list_marks_owned_and_removed_flags(
    fake_binary: LlamaServerBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["flags", "list", "--bin", fake_binary.path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and f"from {fake_binary.path} --help" in lines[0]
    by_name = {line.split(",")[0].split()[0]: line for line in lines[1:]}
    assert by_name["--port"].endswith("[owned]")
    assert by_name["--draft"].endswith("[removed]")
    assert by_name["--ctx-size"].split()[:3] == ["--ctx-size,", "-c", "N"]


def test_import_llama_swap_writes_a_config_that_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models").mkdir()
    for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"):
        (tmp_path / "models" / name).write_bytes(b"GGUF")
    monkeypatch.setenv("MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("LLAMA_HOME", "/opt/llama")
    fixture = Path(__file__).parent / "fixtures" / "llama-swap.yaml"
    assert main(["config", "import-llama-swap", str(fixture), "--ctx-size", "32768"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: ") == 9  # each listed in test_llamaswap
    (tmp_path / "orchestrator.toml").write_text(captured.out)
    assert "--ctx-size" in captured.out and '"32768"' in captured.out
    assert main(["config", "check", str(tmp_path / "orchestrator.toml")]) == 0
    assert "ok (2 models, 0 agents)" in capsys.readouterr().out


class Printed:
    """What a CLI command running in a thread has printed so far."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.lines: list[str] = []

    async def has(self, text: str) -> bool:
        self.lines.extend(self._capsys.readouterr().out.splitlines())
        return any(text in line for line in self.lines)


async def test_logs_follow_prints_lines_as_they_come(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient() as client:
        assert (await client.post(f"{url}/api/models/m/load")).status_code == 200
        printed = Printed(capsys)

        async with trio.open_nursery() as nursery:
            exit_code: list[int] = []

            async def follow() -> None:
                exit_code.append(
                    await trio.to_thread.run_sync(partial(main, ["logs", "-f", "--url", url, "m"]))
                )

            nursery.start_soon(follow)
            await poll_until(partial(printed.has, "model loaded"))  # the history came first
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
            await poll_until(
                partial(printed.has, "POST /v1/chat/completions")
            )  # a live line, while following
            assert (await client.delete(f"{url}/api/sidecars/m")).status_code == 200
        assert exit_code == [0]  # it ended by itself when the sidecar exited
        assert "[exited with code 0 after" in capsys.readouterr().err

        assert await trio.to_thread.run_sync(partial(main, ["logs", "--url", url, "m"])) == 1
        assert "no live sidecar matches 'm'" in capsys.readouterr().err


async def test_events_prints_the_snapshot_and_follows(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with running_daemon(config, fake_binary) as (url, _daemon), httpx.AsyncClient() as client:
        assert await trio.to_thread.run_sync(partial(main, ["events", "--url", url])) == 0
        assert capsys.readouterr().out == "0 sidecars: none\n"
        printed = Printed(capsys)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    trio.to_thread.run_sync,
                    partial(main, ["events", "-f", "--url", url]),
                    abandon_on_cancel=True,
                )
            )
            await poll_until(partial(printed.has, "sidecars: none"))
            assert (await client.post(f"{url}/api/models/m/load")).status_code == 200
            await poll_until(partial(printed.has, " ready "))
            assert any(" spawn " in line and " m " in line for line in printed.lines)
            nursery.cancel_scope.cancel()
