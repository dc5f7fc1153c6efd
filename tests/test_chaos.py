"""Chaos on the fake llama-server: a seeded random run of requests and faults, invariants after each step.

The steps are requests (plain and streaming), SIGKILL, SIGSTOP and SIGCONT of
children, manual evictions, reloads that change a model's flags, and idle-TTL
expiries, against a daemon with a pool of 2 for 3 models. After every step:
the pool accounts for every live child process (no orphans), every child the
pool calls ready is alive, and no more leases are held than requests are
outstanding. Every request must resolve (a 200 that ends properly, or a clear
429/502/503/504) before its deadline. At the end, with the faults lifted, no
lease is left.

The CI run has 200 steps. LLAMA_SIDECAR_LONG_TESTS=1 runs 1000; a failure
prints its seed, and LLAMA_SIDECAR_CHAOS_SEED=N replays it.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import trio

from orchestrator.config import load_config
from orchestrator.policy import State
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.runtime import Daemon
from orchestrator.supervisor.pool import Pool
from tests.conftest import FAKE_SERVER, pid_alive, routes_for

LONG = os.environ.get("LLAMA_SIDECAR_LONG_TESTS") == "1"
STEPS = 1000 if LONG else 200
REQUEST_DEADLINE_S = 30
SETTLE_DEADLINE_S = 10
# Success, or a clear refusal or failure (never a 500, never a hang): status and error code.
EXPECTED_ERRORS = {
    "429 sidecar_overloaded",
    "502 sidecar_spawn_failed",
    "502 sidecar_failed",
    "503 pool_busy",
    "503 sidecar_backing_off",
    "504 sidecar_timeout",
}


def fake_server_pids() -> set[int]:
    """Live fake llama-server processes under this test process."""
    pids = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if str(FAKE_SERVER) in process.cmdline() and pid_alive(process.pid):
                pids.add(process.pid)
        except psutil.NoSuchProcess:
            continue  # exited while we looked: not an orphan
    return pids


def violations(pool: Pool, outstanding: int) -> list[str]:
    """What is wrong with the pool against the process table right now (empty: nothing)."""
    sidecars = pool.sidecars()
    found = []
    orphans = fake_server_pids() - {s.pid for s in sidecars if s.pid is not None}
    if orphans:
        found.append(f"child processes the pool does not know: {sorted(orphans)}")
    for sidecar in sidecars:
        if sidecar.state is State.READY and (sidecar.pid is None or not pid_alive(sidecar.pid)):
            found.append(f"{sidecar.label} is READY but its process {sidecar.pid} is gone")
    leases = sum(sum(pool.leases(s.key)) for s in sidecars)
    if leases > outstanding:
        found.append(f"{leases} leases held for {outstanding} outstanding requests")
    return found


async def settle(pool: Pool, outstanding: Callable[[], int]) -> None:
    """Wait (bounded) until the invariants hold; they may lag a step by a scheduling round or a reap."""
    found = violations(pool, outstanding())
    with trio.move_on_after(SETTLE_DEADLINE_S):
        while found:
            await trio.sleep(0.02)  # the process table has no trio event to wait on
            found = violations(pool, outstanding())
    assert found == []


class Chaos:
    """One seeded run against one daemon."""

    def __init__(self, seed: int, url: str, daemon: Daemon, write_config: Callable[[bool], None]) -> None:
        self.rng = random.Random(seed)
        self.url = url
        self.daemon = daemon
        self.write_config = write_config
        self.a_changed = False
        self.outstanding = 0
        self.outcomes: list[int] = []
        self.errors: list[str] = []
        self.served: set[str] = set()
        self.evictions = 0
        self.stopped: set[int] = set()
        self.history: list[str] = []

    @property
    def pool(self) -> Pool:
        assert self.daemon.pool is not None
        return self.daemon.pool

    async def request(self, client: httpx.AsyncClient, model: str, stream: bool) -> None:
        self.outstanding += 1
        try:
            with trio.fail_after(REQUEST_DEADLINE_S):
                body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
                async with client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as reply:
                    text = (await reply.aread()).decode()
            if reply.status_code == 200 and stream:
                # Ends with [DONE], or with an error event if the child died mid-stream.
                assert text.rstrip().endswith("data: [DONE]") or '"error"' in text, text[-300:]
            elif reply.status_code == 200:
                assert json.loads(text)["choices"][0]["message"]["content"], text
            if reply.status_code == 200:
                self.served.add(model)
            else:
                error = json.loads(text)["error"]
                assert error["message"], text
                self.errors.append(f"{reply.status_code} {error['code']}: {error['message'][:100]}")
            self.outcomes.append(reply.status_code)
        finally:
            self.outstanding -= 1

    async def evict(self, client: httpx.AsyncClient, key: str) -> None:
        with trio.fail_after(REQUEST_DEADLINE_S):
            response = await client.delete(f"{self.url}/api/sidecars/{key}")
        assert response.status_code in (200, 404), response.text  # 404: it exited meanwhile
        if response.status_code == 200:
            self.evictions += 1

    def live_children(self) -> list[tuple[str, int]]:
        return [(s.label, s.pid) for s in self.pool.sidecars() if s.pid is not None and pid_alive(s.pid)]

    async def step(self, client: httpx.AsyncClient, nursery: trio.Nursery) -> str:
        action = self.rng.choices(
            ["request", "sigkill", "sigstop", "sigcont", "evict", "reload", "ttl", "drain"],
            weights=[10, 1, 1, 1, 1, 0.5, 0.5, 1],
        )[0]
        children = self.live_children()
        if action == "request":
            model, stream = self.rng.choice("abc"), self.rng.random() < 0.5
            nursery.start_soon(self.request, client, model, stream)
            return f"request {model} stream={stream}"
        if action in ("sigkill", "sigstop") and children:
            label, pid = self.rng.choice(children)
            os.kill(pid, signal.SIGKILL if action == "sigkill" else signal.SIGSTOP)
            if action == "sigstop":
                self.stopped.add(pid)
            return f"{action} {label}"
        if action == "sigcont" and self.stopped:
            pid = self.rng.choice(sorted(self.stopped))
            self.stopped.discard(pid)
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
            return f"sigcont {pid}"
        if action == "evict" and self.pool.sidecars():
            key = self.rng.choice(self.pool.sidecars()).key
            nursery.start_soon(self.evict, client, key)
            return f"evict {key[:8]}"
        if action == "reload":
            self.a_changed = not self.a_changed
            self.write_config(self.a_changed)
            reloaded = await client.post(f"{self.url}/api/reload")
            assert reloaded.status_code == 200, reloaded.text
            return f"reload (a changed: {self.a_changed})"
        if action == "ttl":
            # c has a short idle TTL: once nothing uses it, it must go by itself.
            with trio.fail_after(REQUEST_DEADLINE_S):
                while any(s.spec.model == "c" for s in self.pool.sidecars()):  # noqa: ASYNC110
                    await trio.sleep(0.05)  # bounded; c may be busy with outstanding requests
            return "ttl: c expired"
        if action == "drain":
            with trio.fail_after(REQUEST_DEADLINE_S * 2):
                while self.outstanding:  # noqa: ASYNC110 - counted by the request tasks
                    await trio.sleep(0.02)
            return "drain"
        return f"{action}: nothing to do"

    async def run(self, steps: int) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_DEADLINE_S) as client, trio.open_nursery() as nursery:
            for index in range(steps):
                self.history.append(f"{index}: {await self.step(client, nursery)}")
                await settle(self.pool, lambda: self.outstanding)
            for pid in self.stopped:  # lift the remaining faults; every request must still resolve
                if pid_alive(pid):
                    os.kill(pid, signal.SIGCONT)
        await settle(self.pool, lambda: self.outstanding)
        leases = {s.label: self.pool.leases(s.key) for s in self.pool.sidecars()}
        assert all(held == (0, 0) for held in leases.values()), leases


async def test_seeded_chaos_keeps_the_pool_consistent_and_resolves_every_request(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    seed = int(os.environ.get("LLAMA_SIDECAR_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (replay: LLAMA_SIDECAR_CHAOS_SEED={seed})")
    paths = {name: fake_model(name, tokens=6, token_delay_s=0.01) for name in "abc"}
    path = tmp_path / "chaos.toml"

    def write_config(a_changed: bool) -> None:
        path.write_text(
            "[server]\nport = 0\n"
            "[llama_server]\nhealth_interval_s = 0.2\nhealth_timeout_s = 5\nstop_grace_s = 1\n"
            "upstream_idle_timeout_s = 2\n"
            "[pool]\nmax_sidecars = 2\ncapacity_wait_s = 5\ndrain_timeout_s = 5\n"
            f'[models.a]\npath = "{paths["a"]}"\nflags = {json.dumps(["-c", "512"] if a_changed else [])}\n'
            f'[models.b]\npath = "{paths["b"]}"\n'
            f'[models.c]\npath = "{paths["c"]}"\nttl_s = 0.3\n'
        )

    def load() -> RouteTable:
        return routes_for(load_config(path), fake_binary)

    write_config(False)
    daemon = Daemon(load(), load)
    chaos: Chaos | None = None
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(daemon.run)
            chaos = Chaos(seed, url, daemon, write_config)
            await chaos.run(STEPS)
            daemon.request_shutdown()
    except BaseException as failure:
        recent = "\n".join(chaos.history[-15:]) if chaos else "(before the first step)"
        failure.add_note(
            f"chaos seed {seed}; replay with LLAMA_SIDECAR_CHAOS_SEED={seed}\nlast steps:\n{recent}"
        )
        raise
    assert chaos is not None
    statuses = {status: chaos.outcomes.count(status) for status in sorted(set(chaos.outcomes))}
    print(f"chaos: {len(chaos.outcomes)} requests resolved: {statuses}; served {sorted(chaos.served)}")
    assert {error.split(":")[0] for error in chaos.errors} <= EXPECTED_ERRORS, sorted(set(chaos.errors))
    assert chaos.served == set("abc")  # faults were injected, not a total outage
    assert chaos.evictions > 0  # the manual evictions really happened
