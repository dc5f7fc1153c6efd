from __future__ import annotations

import struct

import pytest

from orchestrator import kvindex
from orchestrator.kvindex import KvIndex, SavedSlot, SlotFileError


def saved(
    key: str = "k1", slot: int = 0, size: int = 100, used_at: float = 0.0, identity: str = "m|b"
) -> SavedSlot:
    return SavedSlot(key, identity, "model", slot, f"{key}-{slot}.bin", 10, size, used_at, used_at)


def slot_file(prompt: list[int], packed: bool = True, state: bytes = b"state") -> bytes:
    body = [-1, 1, len(prompt), *prompt] if packed else prompt
    return struct.pack("<III", kvindex.SEQ_MAGIC, 4, len(body)) + struct.pack(f"<{len(body)}i", *body) + state


def test_the_prompt_is_read_from_a_file_as_llama_server_packs_it_and_as_older_builds_did() -> None:
    for packed in (True, False):
        data = slot_file([5, 6, 7], packed=packed)
        head = data[: kvindex.HEADER.size]
        assert kvindex.prompt_bytes_needed(head) == kvindex.HEADER.size + 4 * (6 if packed else 3)
        assert kvindex.slot_prompt(data) == (5, 6, 7)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"ggs", "shorter than a slot file's header"),
        (struct.pack("<III", 0x46554747, 4, 0), "not a llama.cpp slot file"),
        (slot_file([1, 2, 3])[:20], "cut short inside its 6-token prompt"),
        (struct.pack("<III3i", kvindex.SEQ_MAGIC, 4, 3, -1, 1, 9), "shorter than the token count"),
    ],
)
def test_a_file_that_is_not_a_whole_slot_file_is_refused_saying_why(data: bytes, problem: str) -> None:
    with pytest.raises(SlotFileError, match=problem):
        kvindex.slot_prompt(data)


def test_the_index_round_trips_and_refuses_what_it_did_not_write() -> None:
    index = KvIndex((saved(), saved("k2", 1)), {"k3": "sliding window"})
    assert KvIndex.from_json(index.to_json()) == index
    for bad in ({"version": 2, "slots": []}, [], {"version": 1, "slots": [{"key": "k"}]}):
        with pytest.raises(ValueError):
            KvIndex.from_json(bad)


def test_a_new_save_replaces_its_keys_slot_and_unhelpful_keys_lose_their_files() -> None:
    old, other = saved(size=100), saved("k2")
    index, replaced = KvIndex((old, other)).with_slot(saved(size=300, used_at=5))
    assert replaced == old and index.used_bytes == 400 and index.of("k1")[0].bytes == 300
    index = index.marked_unhelpful("k1", "cache_n 0")
    assert index.of("k1") == [] and index.unhelpful == {"k1": "cache_n 0"} and index.slots == (other,)


def test_room_is_made_least_recently_used_first_and_never_by_dropping_the_replaced_file() -> None:
    a, b, c = saved("a", used_at=1), saved("b", used_at=3), saved("c", used_at=2)
    index = KvIndex((a, b, c))
    assert kvindex.make_room(index, budget=350, incoming=100) == ([a], True)
    assert kvindex.make_room(index, budget=350, incoming=250) == ([a, c], True)
    assert kvindex.make_room(index, budget=300, incoming=100, keep=b) == ([], True)  # b goes anyway
    assert kvindex.make_room(index, budget=300, incoming=301) == ([], False)  # never fits: nothing goes


def test_the_rules_for_saving_helping_budgets_and_stale_files() -> None:
    assert not kvindex.worth_saving(255, 256) and kvindex.worth_saving(256, 256)
    assert not kvindex.worth_saving(0, 1)
    assert kvindex.restore_helped(6104, 6103) and not kvindex.restore_helped(905, 0)
    assert not kvindex.restore_helped(1000, 500)
    assert kvindex.disk_budget("10%", free=900, used=100) == 100
    assert kvindex.disk_budget("1 KiB", free=0, used=0) == 1024
    configured, flexible, gone = saved("a"), saved("b", identity="open|b"), saved("c", identity="old|b")
    assert kvindex.stale(KvIndex((configured, flexible, gone)), ["a"], ["open|b"]) == [gone]
