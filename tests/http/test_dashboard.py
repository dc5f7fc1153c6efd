"""The dashboard in a real browser (Playwright driving Debian's chromium) with a real llama-server."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from orchestrator.routing import LlamaServerBinary
from tests.conftest import ARTIFACTS, CHROMIUM_ARGS, make_config, running_daemon

SLOW_S = 60_000  # ms: loading a model on a busy 2-core machine


def drive(url: str, chromium: str) -> None:
    """Everything a person does on the page; runs in a worker thread (Playwright's sync API)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        page.evaluate("window.sameDocument = true")  # gone if the page ever reloads
        expect(page.locator("#connection")).to_have_text("live")
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
            re.compile(r"^[\d.]+ [MG]iB of [\d.]+ GiB budget \([\d.]+ GiB total\)$")
        )
        share = host.locator(".share").get_attribute("title") or ""
        assert re.fullmatch(r"smollm2 \(\w{8}\): [\d.]+ [MG]iB, (learned|estimate)", share), share
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        row.locator('button[data-action="stop"]').click()
        expect(row).to_have_count(0, timeout=SLOW_S)
        expect(log).to_contain_text("exited with code")
        expect(page.locator("#no-sidecars")).to_be_visible()
        expect(host.locator(".share")).to_have_count(0)
        assert page.evaluate("window.sameDocument") is True  # all of it live, no reload
        browser.close()


@pytest.mark.real
async def test_dashboard_shows_a_real_child_live_and_stops_it(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path, chromium: str
) -> None:
    config = make_config(tmp_path, {"smollm2": {"path": str(demo_model), "flags": ["-c", "1024"]}})
    async with running_daemon(config, real_binary) as (url, daemon):
        await trio.to_thread.run_sync(partial(drive, url, chromium))
        assert daemon.pool is not None and daemon.pool.sidecars() == []
