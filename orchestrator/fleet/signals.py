"""What a daemon tells the engines that route between machines: pure.

Two readers, one status. The Gateway API Inference Extension's endpoint picker
scrapes model-server series (its proposal 003; names as llm-d-router v0.10
reads them by default, the vLLM ones) and treats the models a daemon serves as
LoRA adapters: loaded ones "running", loading ones "waiting", and ``max_lora``
how many it could hold now. HAProxy's agent check asks one line per server,
model and tier, and reads back a weight or ``drain``, so a model goes where it
is loaded, else where it fits beside what runs, else where it could start.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Room(enum.Enum):
    """Whether a model not loaded on a daemon could start there."""

    NOW = "now"  # it fits beside what runs
    EVICT = "evict"  # once idle children stop
    WAIT = "wait"  # busy children hold what it needs
    NEVER = "never"  # too big for this machine's budgets


@dataclass(frozen=True)
class ModelStatus:
    """One public name (model, agent or alias) on one daemon."""

    name: str
    loaded: bool  # a ready child serves it
    loading: bool  # its child is starting
    room: Room  # for a start, when it is not loaded


@dataclass(frozen=True)
class NodeStatus:
    """A daemon as a router sees it."""

    draining: bool
    models: tuple[ModelStatus, ...]
    running_requests: int
    queued_requests: int
    kv_usage: float  # 0..1: the fullest ready child's KV cache (the picker's KVCacheUtilization)

    def model(self, name: str) -> ModelStatus | None:
        return next((m for m in self.models if m.name == name), None)


# The series the endpoint picker reads by default (llm-d-router v0.10, engine "vllm").
QUEUED = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
LORA_INFO = "vllm:lora_requests_info"


def _names(models: Iterable[ModelStatus]) -> str:
    """The picker's list format: comma-separated, no spaces."""
    return ",".join(sorted(m.name for m in models))


def lora_labels(node: NodeStatus) -> dict[str, str]:
    """The labels of ``vllm:lora_requests_info``: loaded names running, loading ones waiting, and
    ``max_lora`` what is there plus how many more configured names fit now (0 while draining)."""
    running = [m for m in node.models if m.loaded]
    waiting = [m for m in node.models if m.loading and not m.loaded]
    startable = [m for m in node.models if not m.loaded and not m.loading and m.room is Room.NOW]
    most = 0 if node.draining else len(running) + len(waiting) + len(startable)
    return {
        "running_lora_adapters": _names(running),
        "waiting_lora_adapters": _names(waiting),
        "max_lora": str(most),
    }


# HAProxy's agent check: HAProxy sends the server's agent-send line, "<mode> <model>\n". Each mode is
# one tier of backends for a model, tried in this order (see fleet.haproxy).
LOADED_MODE = "loaded"  # daemons where it is loaded or loading
FITS_MODE = "fits"  # daemons where it would start beside what runs
ANY_MODE = "any"  # daemons where it could start at all, preferring those with idle children to stop
MODES = (LOADED_MODE, FITS_MODE, ANY_MODE)
_ANY_WEIGHT = {Room.NOW: 100, Room.EVICT: 10, Room.WAIT: 1}


def agent_reply(node: NodeStatus, line: str) -> str:
    """The agent check's answer to ``line``: "ready up N%" to take new requests with weight N, or
    "drain" to take none (a draining daemon; a model not served here or not in this tier)."""
    mode, _, name = line.strip().partition(" ")
    status = node.model(name.strip())
    if node.draining or status is None or mode not in MODES:
        return "drain\n"
    here = status.loaded or status.loading
    if mode == LOADED_MODE:
        return "ready up 100%\n" if here else "drain\n"
    if mode == FITS_MODE:
        return "ready up 100%\n" if here or status.room is Room.NOW else "drain\n"
    weight = 100 if here else _ANY_WEIGHT.get(status.room)
    return "drain\n" if weight is None else f"ready up {weight}%\n"
