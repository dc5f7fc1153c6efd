"""One child's life, with the fake llama-server injecting faults (and the real one where it matters)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from orchestrator.config import Config
from orchestrator.errors import SpawnError
from orchestrator.policy import State, StopReason
from orchestrator.procgroup import child_environment
from orchestrator.routing import LlamaServerBinary
from orchestrator.supervisor import logtail
from orchestrator.supervisor.events import Stopped
from orchestrator.supervisor.sidecar import STDERR_GATHER_S, Sidecar
from tests.conftest import free_port, make_config, pid_alive, port_taken, routes_for, wait_until


def sidecar_for(config: Config, binary: LlamaServerBinary, ports: list[int]) -> Sidecar:
    spec = routes_for(config, binary).resolve(next(iter(config.models)))
    remaining = list(ports)
    return Sidecar(
        spec,
        env=child_environment({"PATH": "/usr/bin:/bin"}, binary.env),
        settings=config.llama_server,
        allocate_port=lambda: remaining.pop(0),
    )


def test_child_environment_scrubs_what_would_override_argv() -> None:
    env = child_environment(
        {"PATH": "/bin", "LLAMA_ARG_PORT": "1", "LLAMA_ARG_MODEL": "x", "LLAMA_SERVER_ROUTER_PORT": "9"},
        {"LD_LIBRARY_PATH": "/lib"},
    )
    assert env == {"PATH": "/bin", "LD_LIBRARY_PATH": "/lib"}


async def test_slow_load_is_ready_once_health_says_so(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(load_s=1.0)}})
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        started = trio.current_time()
        await nursery.start(sidecar.run)
        assert sidecar.state is State.READY
        assert trio.current_time() - started >= 1.0  # not before the load finished
        status, _body = await sidecar.upstream.get("/health", timeout_s=5)
        assert status == 200
        await sidecar.stop(StopReason.MANUAL, "test over")
    assert sidecar.describe()["state"] == "exited"
    assert sidecar.exit_code == 0  # SIGTERM was honoured: a graceful exit


@pytest.mark.parametrize("echo", [False, True])
async def test_child_lines_reach_the_daemons_log_at_debug_unless_echoed(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
    echo: bool,
) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator.child")
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, llama_server={"echo_stderr": echo})
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        await nursery.start(sidecar.run)
        await sidecar.stop(StopReason.MANUAL, "test over")
    lines = [r for r in caplog.records if r.name == "orchestrator.child" and "model loaded" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == (logging.INFO if echo else logging.DEBUG)
    assert lines[0].getMessage().startswith(sidecar.label)
    assert any("model loaded" in line for line in sidecar.stderr.tail(400))  # kept either way


async def test_crash_during_load_fails_at_once_with_stderr_tail(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(
        tmp_path, {"m": {"path": fake_model(exit_during_load=7)}}, llama_server={"health_timeout_s": 60}
    )
    sidecar = sidecar_for(config, fake_binary, [free_port()])
    with trio.fail_after(10):  # far below health_timeout_s: it did not wait for the timeout
        with pytest.raises(SpawnError) as raised:
            await sidecar.run()
    assert "exited while loading (exit code 7)" in str(raised.value)
    assert "fake: failed to load model" in raised.value.stderr_tail


async def test_load_timeout_kills_the_child_and_says_so(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(
        tmp_path, {"m": {"path": fake_model(load_s=60)}}, llama_server={"health_timeout_s": 0.5}
    )
    sidecar = sidecar_for(config, fake_binary, [free_port()])
    with pytest.raises(SpawnError, match=r"did not become ready within 0.5 s") as raised:
        await sidecar.run()
    assert any("loading model" in line for line in raised.value.stderr_tail)
    assert sidecar.pid is not None and not pid_alive(sidecar.pid)


async def test_health_that_starts_failing_makes_it_unhealthy_and_killed(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}}, llama_server={"health_interval_s": 0.05})
    events: list[str] = []
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        await nursery.start(sidecar.run)
        sidecar._on_event = lambda event: events.append(event.kind)
        control = await sidecar.upstream.request("POST", "/fake/control", [], b'{"health": "hang"}', 5)
        control.close()
        with trio.fail_after(10):
            await sidecar.wait_exited()
    assert events == ["unhealthy", "exited"]
    assert sidecar.stop_reason is StopReason.UNHEALTHY
    assert isinstance(sidecar.outcome, Stopped) and sidecar.outcome.reason is StopReason.UNHEALTHY
    assert sidecar.pid is not None and not pid_alive(sidecar.pid)


async def test_ignored_sigterm_gets_sigkill_after_the_grace_period(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(
        tmp_path, {"m": {"path": fake_model(ignore_sigterm=True)}}, llama_server={"stop_grace_s": 0.5}
    )
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        await nursery.start(sidecar.run)
        began = trio.current_time()
        with trio.fail_after(10):
            await sidecar.stop(StopReason.MANUAL, "test")
        took = trio.current_time() - began
    assert sidecar.exit_code == -9
    assert took >= 0.5  # it was given the grace period first


async def test_grandchild_is_swept_with_the_group(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(grandchild=True)}})
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        await nursery.start(sidecar.run)
        line = next(line for line in sidecar.stderr.tail() if "grandchild pid" in line)
        grandchild = int(re.findall(r"\d+", line)[-1])
        assert pid_alive(grandchild)
        with trio.fail_after(10):  # the pipes closed: the grandchild no longer held stderr open
            await sidecar.stop(StopReason.MANUAL, "test")
    await wait_until(lambda: not pid_alive(grandchild), timeout_s=5)


async def test_stderr_flood_keeps_the_ring_buffer_bounded_and_the_loop_responsive(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model(stderr_flood_lines=200_000)}})
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        await nursery.start(sidecar.run)
        # While the flood is pumped, other tasks keep getting scheduled promptly.
        worst_lag = 0.0
        while not any("flood line 199999" in line for line in sidecar.stderr.tail(5)):
            before = trio.current_time()
            await trio.sleep(0.01)
            worst_lag = max(worst_lag, trio.current_time() - before - 0.01)
        assert worst_lag < 0.5
        assert len(sidecar.stderr) == 400  # bounded: only the last TAIL_LINES are kept
        assert (await sidecar.upstream.get("/health", timeout_s=5))[0] == 200
        await sidecar.stop(StopReason.MANUAL, "test")


async def test_taken_port_is_retried_on_another(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    with port_taken() as taken:
        other = free_port()
        async with trio.open_nursery() as nursery:
            sidecar = sidecar_for(config, fake_binary, [taken, other])
            await nursery.start(sidecar.run)
            assert sidecar.port == other
            assert any("couldn't bind" in line for line in sidecar.stderr.tail())
            await sidecar.stop(StopReason.MANUAL, "test")


async def test_every_port_taken_is_a_spawn_error_not_a_retry_loop(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    with port_taken() as taken:
        sidecar = sidecar_for(config, fake_binary, [taken] * 3)
        with pytest.raises(SpawnError, match="could not bind a port 3 times in a row"):
            await sidecar.run()


async def test_missing_binary_is_a_spawn_error(tmp_path: Path, fake_model: Callable[..., str]) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    sidecar = sidecar_for(config, LlamaServerBinary(str(tmp_path / "nope"), "test"), [free_port()])
    with pytest.raises(SpawnError, match="cannot start"):
        await sidecar.run()


@pytest.mark.real
async def test_real_corrupt_model_fails_fast_with_its_stderr(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    await trio.Path(corrupt).write_bytes((await trio.Path(demo_model).read_bytes())[:4096])  # truncated
    config = make_config(tmp_path, {"m": {"path": str(corrupt)}})
    sidecar = sidecar_for(config, real_binary, [free_port()])
    with trio.fail_after(30), pytest.raises(SpawnError) as raised:
        await sidecar.run()
    assert "exited while loading" in str(raised.value)
    assert any("corrupt.gguf" in line or "failed" in line.lower() for line in raised.value.stderr_tail)


async def test_a_sidecar_stopped_before_its_process_started_never_starts_one(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        nursery.start_soon(sidecar.stop, StopReason.MANUAL, "evicted at once")
        await sidecar.run()  # returns: a stop on purpose is not a failure
    assert sidecar.pid is None and sidecar.state is State.EXITED
    assert isinstance(sidecar.outcome, Stopped)
    assert (sidecar.outcome.reason, sidecar.outcome.detail, sidecar.outcome.exit_code) == (
        StopReason.MANUAL,
        "evicted at once",
        None,
    )


async def test_stopping_closes_our_connections_before_sigterm_so_the_child_need_not_wait_for_them(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    # Like llama-server, this fake's shutdown waits for its clients to close their connections.
    config = make_config(tmp_path, {"m": {"path": fake_model(sigterm_waits_s=1)}})
    async with trio.open_nursery() as nursery:
        sidecar = sidecar_for(config, fake_binary, [free_port()])
        await nursery.start(sidecar.run)
        for _ in range(2):  # read to the end: the connection stays open for the next request
            assert (await sidecar.upstream.get("/health", timeout_s=5))[0] == 200
        await sidecar.stop(StopReason.MANUAL, "test over")
    tail = sidecar.stderr.tail(20)
    assert any("fake: SIGTERM, shutting down" in line for line in tail), tail
    assert not any("still open" in line for line in tail), tail
    assert sidecar.exit_code == 0


async def test_the_last_start_up_lines_are_read_at_once_then_a_serving_childs_log_is_gathered(
    tmp_path: Path,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
    autojump_clock: trio.testing.MockClock,
) -> None:
    """llama-server answers /health before its log thread writes "model loaded" and "listening on"
    (the bench's cold start once found no such line in the log just after a ready child's first
    answer): a child marked ready by the poll still has them read the moment they come. After them,
    a serving child's lines are gathered into one read every STDERR_GATHER_S."""
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    sidecar = sidecar_for(config, fake_binary, [free_port()])
    sidecar._move(State.READY)  # the /health poll won the race with the log thread
    written: dict[str, float] = {}
    read: dict[str, float] = {}

    def on_line(text: str) -> None:
        sidecar._on_stderr_line(text)
        read[text] = trio.current_time()

    send, receive = trio.testing.memory_stream_one_way_pair()
    lines = ["load_tensors: late line", "srv main: model loaded",
             "srv main: listening on http://127.0.0.1:1", "slot one", "slot two"]  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(logtail.pump_lines, receive, on_line, sidecar._stderr_pause)
        for text in lines:
            written[text] = trio.current_time()
            await send.send_all(text.encode() + b"\n")
            await trio.sleep(0.01)  # the child writes line by line
        await send.aclose()
    assert [read[text] - written[text] for text in lines[:3]] == [0, 0, 0]  # each read as it came
    assert read["slot one"] == read["slot two"] >= written["slot one"] + STDERR_GATHER_S - 0.02
