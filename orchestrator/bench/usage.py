"""A proxy's own CPU seconds and memory while a benchmark runs (psutil, sampled in a thread).

"Its own" is the process and its descendants, less the llama-server children
it supervises: for this daemon that is the daemon and its watchdog, for
llama-swap the one process. So both are measured the same way.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import psutil
import trio

from orchestrator.procgroup import process_family

SAMPLE_INTERVAL_S = 0.25
_SERVED_BY = "llama-server"  # the model servers: the workload, not the proxy


@dataclass(frozen=True)
class ProxyUsage:
    cpu_s: float
    peak_rss_bytes: int
    final_rss_bytes: int  # after the run, its children still up


class UsageMeter:
    """Measures one proxy's processes from construction until ``result`` is read."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._cpu_start = self._cpu()
        self._peak = 0

    def _own(self) -> list[psutil.Process]:
        family = [self._process]
        try:
            descendants = process_family(self._process.pid)[1:]
        except psutil.NoSuchProcess:  # the proxy has exited: its reads below count nothing
            descendants = []
        for process in descendants:
            try:
                if not os.path.basename(process.exe()).startswith(_SERVED_BY):
                    family.append(process)
            except psutil.Error:  # gone meanwhile, or not ours to read: not counted
                continue
        return family

    def _cpu(self) -> float:
        total = 0.0
        for process in self._own():
            try:
                times = process.cpu_times()
            except psutil.Error:  # exited between the listing and the read
                continue
            total += times.user + times.system
        return total

    def _rss(self) -> int:
        total = 0
        for process in self._own():
            try:
                total += process.memory_info().rss
            except psutil.Error:  # exited between the listing and the read
                continue
        return total

    def _sample(self) -> None:
        self._peak = max(self._peak, self._rss())

    def cpu_s(self) -> float:
        """CPU seconds its processes spent since the meter was made."""
        return self._cpu() - self._cpu_start

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self._sample)
        task_status.started()
        while True:
            await trio.sleep(SAMPLE_INTERVAL_S)
            await trio.to_thread.run_sync(self._sample)

    def result(self) -> ProxyUsage:
        rss = self._rss()
        self._peak = max(self._peak, rss)
        return ProxyUsage(round(self.cpu_s(), 3), self._peak, rss)


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
