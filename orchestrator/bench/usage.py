"""The daemon's own CPU seconds and peak memory while a benchmark runs (psutil, sampled in a thread)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import psutil
import trio

SAMPLE_INTERVAL_S = 0.1


@dataclass(frozen=True)
class DaemonUsage:
    cpu_s: float
    peak_rss_bytes: int


class UsageMeter:
    """Measures one process from ``run`` starting until ``result`` is read."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._cpu_start = self._cpu()
        self._peak = 0

    def _cpu(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _sample(self) -> None:
        self._peak = max(self._peak, int(self._process.memory_info().rss))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self._sample)
        task_status.started()
        while True:
            await trio.sleep(SAMPLE_INTERVAL_S)
            await trio.to_thread.run_sync(self._sample)

    def result(self) -> DaemonUsage:
        self._sample()
        return DaemonUsage(round(self._cpu() - self._cpu_start, 3), self._peak)


def machine_description() -> str:
    """What the figures were measured on, e.g. 'AMD EPYC 7B13, 2 cores, 24 GB, Linux 6.1'."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux, or an unusual cpuinfo: keep what platform says
    memory_gb = psutil.virtual_memory().total / 2**30
    return (
        f"{model}, {psutil.cpu_count()} cores, {memory_gb:.0f} GB, {platform.system()} {platform.release()}"
    )
