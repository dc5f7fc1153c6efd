"""`bench overhead` on SmolLM2: every figure present and plausible, through and direct, with ratios."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import httpx
import pytest
import trio

from orchestrator.bench.overhead import (
    CHAT,
    Endpoint,
    OverheadPlan,
    _measure_all,
    render_overhead,
    throughput,
)
from orchestrator.cli import main
from orchestrator.routing import LlamaServerBinary
from tests.conftest import make_config, running_daemon


@pytest.mark.real
@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_overhead_reports_both_paths_ratios_and_the_daemons_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], api: str
) -> None:
    report_path = tmp_path / "overhead.json"
    argv = ["bench", "overhead", "--requests", "6", "--streams", "2", "--tokens", "8", "--concurrency", "1,2"]
    assert main([*argv, "--api", api, "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["api"] == api
    assert report["endpoints"] == ["direct", "through"]
    names = [metric["name"] for metric in report["metrics"]]
    assert names == [
        "small request p50", "small request p99", "TTFT p50", "ITL p50", "ITL p99", "stream tokens/s",
        "c=1 requests/s", "c=1 tokens/s", "c=2 requests/s", "c=2 tokens/s",
    ]  # fmt: skip
    for metric in report["metrics"]:
        for endpoint in ("direct", "through"):
            assert metric["values"][endpoint] > 0, metric
        assert math.isfinite(metric["ratio"]["through"]) and metric["ratio"]["through"] > 0, metric
    small = report["metrics"][0]
    assert small["added_ms"]["through"] == pytest.approx(
        small["values"]["through"] - small["values"]["direct"], abs=1e-3
    )
    assert report["baselines"] == {"through": "direct"}
    daemon = report["usage"]["through"]  # the spawned daemon and its watchdog, not the children
    assert daemon["cpu_s"] > 0 and 10 < daemon["final_rss_mb"] <= daemon["peak_rss_mb"] < 1000
    assert daemon["cpu_ms_per_small_request"] > 0 and daemon["cpu_ms_per_chunk"] > 0
    printed = capsys.readouterr().out
    assert "| small request p50 (ms) |" in printed and "through/direct" in printed
    assert "| through | " in printed and "CPU ms per small request" in printed
    assert ("through Ollama's /api/chat" in printed) == (api == "ollama")


def test_overhead_against_an_unreachable_daemon_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "overhead", "--url", "http://127.0.0.1:9", "--model", "m"]) == 1
    assert "no daemon answers at http://127.0.0.1:9" in capsys.readouterr().err
    for tool in ("overhead", "cold"):  # another daemon's models are its own: name the one to measure
        assert main(["bench", tool, "--url", "http://127.0.0.1:9"]) == 1
        expected = "name the model or agent to measure on http://127.0.0.1:9 with --model"
        assert expected in capsys.readouterr().err
    assert (
        main(["bench", "overhead", "--url", "http://127.0.0.1:9", "--model", "m", "--compare-pid", "1"]) == 1
    )
    assert "give --compare URL" in capsys.readouterr().err


@pytest.mark.real
async def test_overhead_attaches_to_a_running_daemon_and_adds_a_compare_column(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = make_config(tmp_path, {"smol": {"path": str(demo_model), "flags": ["-c", "1024"]}})
    report_path = tmp_path / "overhead.json"
    async with running_daemon(config, real_binary) as (url, _daemon):
        # Any OpenAI-compatible server in front of the same model will do: here, the daemon itself.
        command = [
            sys.executable, "-m", "orchestrator", "bench", "overhead", "--url", url, "--model", "smol",
            "--compare", f"{url}/v1", "--requests", "4", "--streams", "2", "--tokens", "8",
            "--concurrency", "2", "--json", str(report_path),
        ]  # fmt: skip
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        # Against the compared proxy's own child (here the same daemon again), with its pid.
        with_direct = [*command, "--compare-direct", url, "--compare-pid", str(os.getpid())]
        with_direct[with_direct.index("--json") + 1] = str(tmp_path / "direct.json")
        second = await trio.run_process(with_direct, capture_stdout=True, capture_stderr=True, check=False)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
    report = json.loads(report_path.read_text())
    assert report["endpoints"] == ["direct", "through", "compare"]
    assert report["baselines"] == {"through": "direct", "compare": "direct"}
    assert all(metric["ratio"]["compare"] > 0 for metric in report["metrics"])
    assert report["usage"]["through"]["peak_rss_mb"] > 10  # this process, found through /api/stats
    assert "compare" not in report["usage"]  # no pid given for it
    assert "compare/direct" in result.stdout.decode()
    report = json.loads((tmp_path / "direct.json").read_text())
    assert report["endpoints"] == ["direct", "through", "compare-direct", "compare"]
    assert report["baselines"] == {"through": "direct", "compare": "compare-direct"}
    small = report["metrics"][0]
    assert small["added_ms"]["compare"] == pytest.approx(
        small["values"]["compare"] - small["values"]["compare-direct"], abs=1e-3
    )
    assert report["usage"]["compare"]["cpu_s"] > 0
    assert "compare/compare-direct" in second.stdout.decode()


def answer(request: httpx.Request) -> httpx.Response:
    """What an OpenAI-compatible server answers the bench: four tokens streamed, or one not streamed."""
    if request.url.path != CHAT:
        return httpx.Response(404)
    if json.loads(request.content).get("stream") is not True:
        return httpx.Response(200, json={"choices": [{"message": {"content": "t"}}]})
    events = [{"choices": [{"delta": {"content": f"t{i}"}}]} for i in range(4)]
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


async def test_a_throughput_level_counts_failed_requests_and_goes_on() -> None:
    # A proxy that drops some requests under load (llama-swap answers some 502 at concurrency 16
    # here) is reported as such: the run is not lost, and its rates count what was served.
    served = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal served
        if json.loads(request.content).get("stream") is not True:
            return httpx.Response(400)
        served += 1
        return httpx.Response(502) if served % 2 == 0 else answer(request)

    endpoint = Endpoint("compare", f"http://proxy.test{CHAT}", "m", {})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await throughput(client, endpoint, concurrency=2, requests=6, tokens=4)
    assert len(result.failures) == 3 and all("HTTP 502" in failure for failure in result.failures)
    assert result.requests_per_s > 0 and result.tokens_per_s == pytest.approx(4 * result.requests_per_s)


async def test_requests_that_fail_in_the_latency_phases_are_counted_and_the_run_goes_on() -> None:
    # One failed request of the compared proxy (a 502, a reset) once ended an eight-minute run
    # with a traceback; it is left out of that proxy's figures and reported instead.
    asked = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal asked
        if request.url.host != "compare.test":
            return answer(request)
        asked += 1
        if asked % 3 == 0:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(502) if asked % 3 == 1 else answer(request)

    endpoints = [
        Endpoint("direct", f"http://direct.test{CHAT}", "m", {}),
        Endpoint("through", f"http://through.test{CHAT}", "m", {}, baseline="direct"),
        Endpoint("compare", f"http://compare.test{CHAT}", "m", {}, baseline="direct"),
    ]
    plan = OverheadPlan(model="m", small_requests=6, streams=3, stream_tokens=4, concurrency=(2,))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        measured = await _measure_all(client, endpoints, plan, {}, lambda line: None)
    phases = [(failure["phase"], failure["endpoint"], failure["failed"], failure["of"])
              for failure in measured.failures]  # fmt: skip
    assert phases == [
        ("the small requests", "compare", 4, 6),
        ("the streams", "compare", 2, 3),
        ("throughput at c=2", "compare", 5, 8),
    ]
    assert "HTTP 502" in measured.failures[0]["first"]
    small = measured.metrics[0]
    assert all(value > 0 for value in small["values"].values())  # the two that were answered
    report = {"endpoints": [e.name for e in endpoints], "metrics": measured.metrics, "usage": {},
              "baselines": {"through": "direct", "compare": "direct"}, "failures": measured.failures,
              "model": "m", "machine": "here"}  # fmt: skip
    assert "compare failed 4 of 6 requests in the small requests" in render_overhead(report)
