"""What a daemon tells routers: the endpoint picker's LoRA labels and HAProxy's agent replies, by table."""

from __future__ import annotations

import pytest

from orchestrator.fleet.signals import ModelStatus, NodeStatus, Room, agent_reply, lora_labels


def node(*models: ModelStatus, draining: bool = False) -> NodeStatus:
    return NodeStatus(draining, models, running_requests=0, queued_requests=0, kv_usage=0.0)


LOADED = ModelStatus("coder", loaded=True, loading=False, room=Room.NOW)
LOADING = ModelStatus("chat", loaded=False, loading=True, room=Room.NOW)
FITS = ModelStatus("small", loaded=False, loading=False, room=Room.NOW)
EVICT = ModelStatus("mid", loaded=False, loading=False, room=Room.EVICT)
WAIT = ModelStatus("big", loaded=False, loading=False, room=Room.WAIT)
NEVER = ModelStatus("huge", loaded=False, loading=False, room=Room.NEVER)
EVERY = node(LOADED, LOADING, FITS, EVICT, WAIT, NEVER)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("loaded coder", "ready up 100%"),
        ("loaded chat", "ready up 100%"),  # loading: the next request waits for the same child
        ("loaded small", "drain"),
        ("fits small", "ready up 100%"),
        ("fits coder", "ready up 100%"),
        ("fits mid", "drain"),
        ("any mid", "ready up 10%"),  # after idle children stop
        ("any big", "ready up 1%"),  # busy children hold its room: a last resort
        ("any huge", "drain"),  # never fits here
        ("any small", "ready up 100%"),
        ("loaded unknown", "drain"),  # not served by this daemon
        ("bogus coder", "drain"),  # a mode we do not know
        ("", "drain"),
        ("loaded coder\r", "ready up 100%"),  # HAProxy's line, however it ends
    ],
)
def test_agent_replies_by_tier(line: str, reply: str) -> None:
    assert agent_reply(EVERY, line) == reply + "\n"


def test_a_draining_daemon_drains_every_tier() -> None:
    draining = node(LOADED, FITS, draining=True)
    assert {agent_reply(draining, f"{mode} coder") for mode in ("loaded", "fits", "any")} == {"drain\n"}


def test_lora_labels_list_loaded_and_loading_names_and_how_many_could_be_held() -> None:
    assert lora_labels(EVERY) == {
        "running_lora_adapters": "coder",
        "waiting_lora_adapters": "chat",
        "max_lora": "3",  # coder, chat, and small which fits now
    }
    two = node(LOADED, ModelStatus("agent-b", loaded=True, loading=False, room=Room.NOW))
    assert lora_labels(two)["running_lora_adapters"] == "agent-b,coder"  # sorted, no spaces
    assert lora_labels(node(LOADED, FITS, draining=True))["max_lora"] == "0"
    assert lora_labels(node()) == {"running_lora_adapters": "", "waiting_lora_adapters": "", "max_lora": "0"}
