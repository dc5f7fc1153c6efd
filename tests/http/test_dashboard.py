"""The dashboard in a real browser (Playwright driving Debian's chromium) with a real llama-server."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from orchestrator.routing import LlamaServerBinary

if TYPE_CHECKING:
    from playwright.sync_api import Page

from tests.conftest import ARTIFACTS, browser_page, make_config, poll_until, running_daemon

SLOW_S = 60_000  # ms: loading a model on a busy 2-core machine


def open_dashboard(page: Page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.evaluate("window.sameDocument = true")  # gone if the page ever reloads
    expect(page.locator("#connection")).to_have_text("live")


def drive(url: str, chromium: str) -> None:
    """Everything a person does on the page; runs in a worker thread (Playwright's sync API)."""
    from playwright.sync_api import expect

    with browser_page(chromium) as page:
        open_dashboard(page, url)
        expect(page.locator("#no-sidecars")).to_be_visible()

        page.click('tr[data-route="smollm2"] button[data-action="load"]')
        row = page.locator("#sidecars tbody tr")
        expect(row).to_have_count(1, timeout=SLOW_S)
        expect(row.locator('[data-field="state"]')).to_have_text("ready", timeout=SLOW_S)
        expect(row).to_contain_text("smollm2")
        row.click()
        log = page.locator("#log")
        expect(log).to_contain_text("model loaded", timeout=SLOW_S)  # the child's history
        expect(page.locator("#detail-argv")).to_contain_text("--ctx-size 1024")

        body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code == 200
        expect(log).to_contain_text("prompt eval time", timeout=SLOW_S)  # printed after we connected: live

        page.fill("#log-filter", "prompt eval")
        expect(log.locator("div:not(.hidden)")).to_have_count(1)
        page.fill("#log-filter", "")
        memory = row.locator("td").nth(10)  # filled in by the periodic stats events
        expect(memory).to_have_text(re.compile(r"\d+(\.\d)? [KMG]?B"), timeout=SLOW_S)
        host = page.locator('#memory [data-device="Host"]')  # the child's share of the host budget
        expect(host.locator(".share")).to_have_count(1)
        expect(host.locator('[data-field="use"]')).to_have_text(
            re.compile(r"^[\d.]+ [MG]iB counted of [\d.]+ GiB budget \([\d.]+ GiB total\)$")
        )
        share = host.locator(".share").get_attribute("title") or ""
        assert re.fullmatch(r"smollm2 \(\w{8}\): counts [\d.]+ [MG]iB, (learned|estimate)", share), share
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        row.locator('button[data-action="stop"]').click()
        expect(row).to_have_count(0, timeout=SLOW_S)
        expect(log).to_contain_text("exited with code")
        expect(page.locator("#no-sidecars")).to_be_visible()
        expect(host.locator(".share")).to_have_count(0)

        # Stopped, its prompt was saved (kv_cache.min_tokens = 1 here); loaded again, it shows what came back.
        page.click('tr[data-route="smollm2"] button[data-action="load"]')
        expect(row.locator('[data-field="state"]')).to_have_text("ready", timeout=SLOW_S)
        kv = row.locator('[data-field="kv"]')
        expect(kv).to_have_text(re.compile(r"^[1-9]\d* tok · [\d.]+ [KM]B$"))
        title = kv.get_attribute("title") or ""
        assert re.search(r"slot \d+: [1-9]\d* tokens, saved \d+s ago", title), title
        row.locator('button[data-action="stop"]').click()
        expect(row).to_have_count(0, timeout=SLOW_S)
        assert page.evaluate("window.sameDocument") is True  # all of it live, no reload


@pytest.mark.real
async def test_dashboard_shows_a_real_child_live_and_stops_it(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, chromium: str
) -> None:
    models = {"smollm2": {"path": str(demo_model), "flags": ["-c", "1024"]}}
    config = make_config(tmp_path, models, kv_cache={"min_tokens": 1})
    async with running_daemon(config, real_binary) as (url, daemon):
        await trio.to_thread.run_sync(partial(drive, url, chromium))
        assert daemon.pool is not None and daemon.pool.sidecars() == []


def curl_shows_in_activity(page: Page, url: str) -> None:
    """A request made with curl shows in Activity with its tokens."""
    from playwright.sync_api import expect

    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 7})
    answered = subprocess.run(
        ["curl", "-sS", "-H", "Content-Type: application/json", "-d", body, f"{url}/v1/chat/completions"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    usage = json.loads(answered.stdout)["usage"]
    page.click('#views a[data-view="activity"]')
    newest = page.locator("#activity tbody tr").first
    expect(newest.locator('[data-field="asked"]')).to_have_text("smollm2")
    expect(newest.locator('[data-field="status"]')).to_have_text("200")
    expect(newest.locator('[data-field="generated"]')).to_have_text(str(usage["completion_tokens"]))
    expect(newest.locator('[data-field="prompt"]')).to_have_text(str(usage["prompt_tokens"]))
    expect(newest.locator('[data-field="ttft"]')).to_have_text(re.compile(r"^\d+ ms$"))
    page.screenshot(path=str(ARTIFACTS / "dashboard-activity.png"), full_page=True)


def play(page: Page, max_tokens: int) -> None:
    page.click('#views a[data-view="playground"]')
    page.select_option("#play-model", "smollm2")
    page.fill("#play-max", str(max_tokens))
    page.click("#play-send")


def playground_streams(page: Page) -> str:
    """The playground streams an answer, with its figures."""
    from playwright.sync_api import expect

    play(page, 24)
    figures = page.locator("#play-figures")
    expect(figures).to_have_text(PLAYED, timeout=SLOW_S)
    assert page.locator("#play-output").inner_text().strip()
    page.screenshot(path=str(ARTIFACTS / "dashboard-playground.png"), full_page=True)
    return figures.inner_text()


def charts_have_points(page: Page) -> None:
    page.click('#views a[data-view="charts"]')
    page.wait_for_function(
        "() => { const t = window.llamaSidecar.charts.plots.tokens?.data;"
        " return t && t[0].length >= 3 && t[1].some((v) => v > 0); }",
        timeout=SLOW_S,
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-charts.png"), full_page=True)


def stop_on_a_busy_daemon(page: Page, churn: threading.Event) -> str:
    """A long stream and a request a moment on smollm2 (its row, the summary and the routes change
    all the time); Stop on smollm2-small stops that one only, and the stream goes on."""
    from playwright.sync_api import expect

    play(page, 400)
    expect(page.locator("#play-stop")).to_be_visible()
    page.click('#views a[data-view="overview"]')
    churn.set()
    rows = page.locator("#sidecars tbody tr")
    busy = rows.filter(has=page.get_by_text("smollm2", exact=True))
    target = rows.filter(has=page.get_by_text("smollm2-small", exact=True))
    key = target.get_attribute("data-key") or ""
    expect(busy.locator('[data-field="in_flight"]')).not_to_have_text("0", timeout=SLOW_S)
    target.locator('button[data-action="stop"]').click()
    expect(page.locator(f'#sidecars tbody tr[data-key="{key}"]')).to_have_count(0, timeout=SLOW_S)
    expect(rows).to_have_count(1)
    page.click('#views a[data-view="playground"]')
    expect(page.locator("#play-figures")).to_have_text(PLAYED, timeout=SLOW_S)
    return key


PLAYED = re.compile(r"^TTFT \d+ ms · [\d.]+ tokens/s · \d+ tokens · done$")


def views(url: str, chromium: str, churn: threading.Event) -> dict[str, str]:
    """Activity, playground, charts, and Stop on a busy daemon; runs in a worker thread."""
    from playwright.sync_api import expect

    with browser_page(chromium) as page:
        open_dashboard(page, url)
        expect(page.locator("#sidecars tbody tr")).to_have_count(2, timeout=SLOW_S)
        curl_shows_in_activity(page, url)
        seen = {"playground": playground_streams(page)}
        charts_have_points(page)
        seen["stopped"] = stop_on_a_busy_daemon(page, churn)
        assert page.evaluate("window.sameDocument") is True
    return seen


@pytest.mark.real
async def test_dashboard_activity_charts_playground_and_stop_on_a_busy_daemon(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, chromium: str
) -> None:
    models = {
        "smollm2": {"path": str(demo_model), "flags": ["-c", "1024", "-t", "1"]},
        "smollm2-small": {"path": str(demo_model), "flags": ["-c", "512", "-t", "1"]},
    }
    config = make_config(tmp_path, models, pool={"drain_timeout_s": 60})
    churning = threading.Event()
    done = threading.Event()

    def churn(url: str) -> None:
        """Requests one after another on smollm2 once asked: the page gets events all the time."""
        churning.wait()
        chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        with httpx.Client(timeout=120) as client:
            while not done.is_set():
                assert client.post(f"{url}/v1/chat/completions", json=chat).status_code == 200

    async with running_daemon(config, real_binary) as (url, daemon), httpx.AsyncClient(timeout=120) as client:
        for name in models:
            assert (await client.post(f"{url}/api/models/{name}/load")).status_code == 200
        ARTIFACTS.mkdir(exist_ok=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, churn, url, abandon_on_cancel=True))
            try:
                seen = await trio.to_thread.run_sync(partial(views, url, chromium, churning))
            finally:
                done.set()
                churning.set()
        assert daemon.pool is not None
        assert [s.spec.model for s in daemon.pool.sidecars()] == ["smollm2"]
        assert seen["stopped"] != daemon.pool.sidecars()[0].key


def opened_after_the_requests(url: str, chromium: str, asked: int) -> dict[str, object]:
    """The page, opened once the requests are over, starts from the daemon's last minutes."""
    from playwright.sync_api import expect

    with browser_page(chromium) as page:
        opened = time.time()
        open_dashboard(page, url)
        page.click('#views a[data-view="activity"]')
        rows = page.locator("#activity tbody tr")
        expect(rows).to_have_count(asked)
        expect(rows.first.locator('[data-field="asked"]')).to_have_text("smollm2")
        expect(rows.first.locator('[data-field="generated"]')).to_have_text(re.compile(r"^[1-9]\d*$"))
        page.click('#views a[data-view="charts"]')
        expect(page.locator("#chart-tokens")).to_have_attribute("data-empty", "false")
        expect(page.locator("#chart-tokens .chart-empty")).to_be_hidden()
        tokens = page.evaluate("() => window.llamaSidecar.charts.plots.tokens.data")
        page.screenshot(path=str(ARTIFACTS / "dashboard-opened-late.png"), full_page=True)

        page.click('#views a[data-view="overview"]')
        row = page.locator("#sidecars tbody tr")
        rss = row.locator('[data-field="memory"]')
        expect(rss).to_have_text(re.compile(r"\d+(\.\d)? [KMG]?B"), timeout=SLOW_S)
        host = page.locator('#memory [data-device="Host"]')
        labels = {
            "chip": page.locator("#sum-memory").locator("xpath=..").get_attribute("title"),
            "chip_text": page.locator("#sum-memory").locator("xpath=..").inner_text(),
            "column": page.locator("#sidecars thead th", has_text="RSS").get_attribute("title"),
            "cell": rss.get_attribute("title"),
            "legend": page.locator("#memory-legend").inner_text(),
            "use": host.locator('[data-field="use"]').get_attribute("title"),
            "share": host.locator(".share").get_attribute("title"),
        }
    return {"opened": opened, "tokens": tokens, "labels": labels}


@pytest.mark.real
async def test_a_page_opened_after_the_requests_shows_them_and_labels_every_memory_figure(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, chromium: str
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "1024"]}})
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
    async with running_daemon(config, real_binary) as (url, daemon), httpx.AsyncClient(timeout=120) as client:
        for _ in range(3):
            assert (await client.post(f"{url}/v1/chat/completions", json=chat)).status_code == 200
        sampler_runs = len(daemon.history.replay()) if daemon.history else 0

        async def two_samples_since() -> bool:
            assert daemon.history is not None
            return len(daemon.history.replay()) >= sampler_runs + 2  # the child sampled with its RSS

        await poll_until(two_samples_since, timeout_s=30)
        seen = await trio.to_thread.run_sync(partial(opened_after_the_requests, url, chromium, 3))
    times, pool_tokens = seen["tokens"][0], seen["tokens"][1]  # type: ignore[index]
    assert min(times) < seen["opened"] and max(pool_tokens) > 0  # points from before the page
    labels = seen["labels"]
    assert labels["chip"].startswith("resident memory (RSS) of the daemon and of every child")  # type: ignore[index]
    assert "RSS, daemon and children" in labels["chip_text"]  # type: ignore[index]
    assert labels["column"].startswith("resident memory (RSS) of the child's whole process tree")  # type: ignore[index]
    assert "counts for Host" in labels["cell"]  # type: ignore[index]
    assert "the larger of its need" in labels["legend"] and "RSS column" in labels["legend"]  # type: ignore[index]
    assert "the larger of its need" in labels["use"]  # type: ignore[index]
    assert re.fullmatch(r"smollm2 \(\w{8}\): counts [\d.]+ [MG]iB, (learned|estimate)", labels["share"])  # type: ignore[arg-type]


def empty_charts(url: str, chromium: str) -> list[object]:
    from playwright.sync_api import expect

    with browser_page(chromium) as page:
        open_dashboard(page, url)
        page.click('#views a[data-view="charts"]')
        for name in ("tokens", "inflight", "memory"):
            expect(page.locator(f"#chart-{name}")).to_have_attribute("data-empty", "true")
            expect(page.locator(f"#chart-{name} .chart-empty")).to_have_text("no data yet")
            expect(page.locator(f"#chart-{name} .chart-empty")).to_be_visible()
        ranges = page.evaluate(
            "() => ['tokens', 'inflight', 'memory'].map((n) => {"
            " const s = window.llamaSidecar.charts.plots[n].scales;"
            " return [s.x.min, s.x.max, s.y.min, s.y.max]; })"
        )
        return list(ranges)


async def test_charts_with_no_child_yet_show_their_axes_and_say_so(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str], chromium: str
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with running_daemon(config, fake_binary) as (url, _daemon):
        ranges = await trio.to_thread.run_sync(partial(empty_charts, url, chromium))
    now = time.time()
    for x_min, x_max, y_min, y_max in ranges:  # type: ignore[misc]
        assert now - 700 < x_min < x_max <= now + 5 and x_max - x_min >= 590  # the last 10 minutes
        assert (y_min, y_max) == (0, 1)


def gpu_bars(url: str, chromium: str) -> dict[str, object]:
    """Each GPU's bar and the second child's memory cell, as the page shows them."""
    from playwright.sync_api import expect

    with browser_page(chromium) as page:
        open_dashboard(page, url)
        expect(page.locator("#sidecars tbody tr")).to_have_count(2)
        bars = {}
        for device in ("CUDA0", "CUDA1"):
            shares = page.locator(f'#memory [data-device="{device}"] .share')
            expect(shares).to_have_count(1)
            bars[device] = shares.first.get_attribute("title")
        model_b = page.locator('[data-field="model"]', has_text="b")
        row = page.locator("#sidecars tbody tr").filter(has=model_b)
        cell = row.locator('[data-field="memory"]')
        return {**bars, "cell": cell.get_attribute("title")}


async def test_each_gpus_bar_shows_the_child_placed_on_it(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str], chromium: str
) -> None:
    gpus = "CUDA0:24576:24000,CUDA1:24576:24000"
    binary = dataclasses.replace(fake_binary, env={"FAKE_LLAMA_DEVICES": gpus})
    breakdown = {"Host": [100, 10, 10], "CUDA0": [8000, 1000, 500]}  # 9.3 GiB, wherever it is put
    models = {name: {"path": fake_model(name, breakdown=breakdown)} for name in ("a", "b")}
    config = make_config(tmp_path, models, pool={"prompt_cache_mib": 0})
    async with running_daemon(config, binary) as (url, _daemon), httpx.AsyncClient(timeout=30) as client:
        for name in ("a", "b"):  # a learns what it uses once ready, so b goes to the emptier GPU
            assert (await client.post(f"{url}/api/models/{name}/load")).status_code == 200
        shown = await trio.to_thread.run_sync(partial(gpu_bars, url, chromium))
    assert re.fullmatch(r"a \(\w{8}\): counts 9\.\d GiB, learned", str(shown["CUDA0"])), shown
    assert re.fullmatch(r"b \(\w{8}\): counts 9\.\d GiB, learned", str(shown["CUDA1"])), shown
    assert "; it runs on CUDA1 (CUDA1 has the most free memory (spread)" in str(shown["cell"]), shown
