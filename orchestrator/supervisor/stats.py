"""CPU and memory of the daemon and of each child's process tree, sampled with psutil.

psutil calls block, so each sample runs in a worker thread. Process objects
are kept between samples (keyed by pid and creation time, so a reused pid is
a new process) because CPU percent is measured between two calls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import trio

from orchestrator.devices import gpu_memory_by_pid
from orchestrator.footprint import HOST
from orchestrator.policy import State
from orchestrator.procgroup import process_family
from orchestrator.supervisor.events import Stats
from orchestrator.supervisor.pool import Pool

SAMPLE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Usage:
    rss_bytes: int
    cpu_percent: float
    processes: int


class StatsSampler:
    """Samples usage every ``interval_s`` and publishes it on the pool's events feed."""

    def __init__(self, pool: Pool, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._processes: dict[tuple[int, float], psutil.Process] = {}
        self.latest: dict[str, Any] = {"daemon": None, "sidecars": {}, "total_rss_bytes": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            sampled = [s for s in self._pool.sidecars() if s.pid is not None and s.state is not State.EXITED]
            pids = {s.key: s.pid for s in sampled if s.pid is not None}
            models = {s.key: s.spec.model for s in sampled}
            self.latest = await trio.to_thread.run_sync(self._sample, pids)
            gpus = await trio.to_thread.run_sync(gpu_memory_by_pid)
            for key, usage in self.latest["sidecars"].items():  # the prompt cache grows: re-measured
                self._pool.memory.observe(key, {HOST: usage["rss_bytes"], **gpus.get(pids[key], {})})
                usage["counted_mib"] = self._pool.counted_mib(key)
                # What the sample is of, so that it stands alone when replayed after the child is gone.
                usage["model"] = models[key]
                usage["in_flight"] = self._pool.leases(key)[0]
            self._pool.memory.forget(pids)
            self._pool.publish(Stats(ts=time.time(), **self.latest))
            await trio.sleep(self._interval_s)

    def _sample(self, pids: Mapping[str, int]) -> dict[str, Any]:
        seen: set[tuple[int, float]] = set()
        sidecars = {key: asdict(self._usage(pid, seen, tree=True)) for key, pid in pids.items()}
        daemon = {"pid": os.getpid(), **asdict(self._usage(os.getpid(), seen, tree=False))}
        for gone in set(self._processes) - seen:
            del self._processes[gone]
        total = daemon["rss_bytes"] + sum(u["rss_bytes"] for u in sidecars.values())
        return {"daemon": daemon, "sidecars": sidecars, "total_rss_bytes": total}

    def _usage(self, pid: int, seen: set[tuple[int, float]], *, tree: bool) -> Usage:
        try:
            family = process_family(pid) if tree else [psutil.Process(pid)]
        except psutil.NoSuchProcess:
            return Usage(0, 0.0, 0)  # exited between the listing and now
        rss, cpu, count = 0, 0.0, 0
        for process in family:
            try:
                identity = (process.pid, process.create_time())
                tracked = self._processes.setdefault(identity, process)
                rss += tracked.memory_info().rss
                cpu += tracked.cpu_percent(None)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # gone, or not ours to read: it adds nothing
            seen.add(identity)
            count += 1
        return Usage(rss, round(cpu, 1), count)
