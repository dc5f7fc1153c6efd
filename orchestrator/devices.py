"""The devices a llama-server binary sees (its ``--list-devices``), and what each process uses on them.

``--list-devices`` names each GPU as llama.cpp does (``CUDA0``, ``Vulkan0``,
``ROCm0``, ``Metal``) with its total and free MiB, for every backend alike; it
is asked once per binary and boot (cached like ``--help``). With no GPU it
prints ``(none)``, and the host is all there is (its memory: psutil).
Where ``nvidia-smi`` exists it says what each process holds on each NVIDIA
GPU, matched to ``CUDAn`` by index (as with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.flaghelp import ask_binary
from orchestrator.routing import LlamaServerBinary

MiB = 1 << 20
_DEVICE = re.compile(
    r"^\s*(?P<name>[A-Za-z][\w-]*): (?P<description>.*?) \((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)"
)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    total_bytes: int
    free_bytes: int


def parse_list_devices(text: str) -> list[Device]:
    """The devices in ``llama-server --list-devices`` output (none for ``(none)``)."""
    devices = []
    for line in text.splitlines():
        match = _DEVICE.match(line)
        if match:
            devices.append(
                Device(
                    match["name"], match["description"], int(match["total"]) * MiB, int(match["free"]) * MiB
                )
            )
    return devices


def _boot() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""  # not Linux: the devices are cached per binary alone


def list_devices(binary: LlamaServerBinary) -> list[Device]:
    """The GPUs ``binary`` sees (an empty list: none, or it could not say)."""
    text = ask_binary(
        binary.path,
        binary.identity,
        binary.env,
        "--list-devices",
        accept=lambda answer: "Available devices" in answer,
        also_keyed_by=_boot(),  # a GPU can come or go without the binary changing
    )
    return [] if text is None else parse_list_devices(text)


def gpu_memory_by_pid() -> dict[int, dict[str, int]]:
    """Bytes each process holds on each NVIDIA GPU (``CUDAn``), from nvidia-smi; empty without it."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return {}
    usage: dict[int, dict[str, int]] = {}
    try:
        index_of = {bus: f"CUDA{index}" for index, bus in _query(nvidia_smi, "--query-gpu=index,pci.bus_id")}
        for pid, bus, used in _query(nvidia_smi, "--query-compute-apps=pid,gpu_bus_id,used_memory"):
            if bus in index_of:
                per_device = usage.setdefault(int(pid), {})
                per_device[index_of[bus]] = per_device.get(index_of[bus], 0) + int(used) * MiB
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}  # a broken driver, a busy GPU or an unexpected answer: no GPU figures this time
    return usage


def _query(nvidia_smi: str, query: str) -> list[list[str]]:
    result = subprocess.run(
        [nvidia_smi, query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=NVIDIA_SMI_TIMEOUT_S,
        check=True,
    )
    return [[cell.strip() for cell in line.split(",")] for line in result.stdout.splitlines() if line.strip()]
