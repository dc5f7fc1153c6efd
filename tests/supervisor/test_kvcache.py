"""The KV cache kept across swaps, on the fake llama-server: saves, restores, faults, budget, ownership.

The fake writes and checks slot files as llama-server does (header, packed prompt,
state) and reports ``timings.cache_n`` for a request on a slot's prompt, so every
path of the store runs end to end through a real daemon; the real binary's
figures are in test_kvcache_real.py.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from orchestrator.cli import main
from orchestrator.config import Config
from orchestrator.errors import ConfigError
from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from orchestrator.supervisor.events import KvDropped, KvRestored, KvSaved, PoolEvent
from orchestrator.supervisor.kvcache import KvCache
from tests.conftest import make_config, routes_for, running_daemon
from tests.supervisor.test_metrics import samples, value

TOKENS = 600  # what the fake's slot 0 holds once it has answered (above the default min_tokens)


def two_models(tmp_path: Path, fake_model: Callable[..., str], a: dict[str, Any] | None = None,
               **kv_cache: Any) -> Config:  # fmt: skip
    """A and B, one child at a time: asking for one swaps the other out."""
    models = {
        "a": {"path": fake_model("a", cached_tokens=TOKENS, **(a or {}))},
        "b": {"path": fake_model("b", cached_tokens=TOKENS)},
    }
    return make_config(tmp_path, models, pool={"max_sidecars": 1}, kv_cache=kv_cache)


@asynccontextmanager
async def daemon_with_events(
    config: Config, binary: LlamaServerBinary
) -> AsyncIterator[tuple[str, Daemon, list[PoolEvent], httpx.AsyncClient]]:
    async with running_daemon(config, binary) as (url, daemon), httpx.AsyncClient(timeout=30) as client:
        events: list[PoolEvent] = []
        assert daemon.pool is not None
        daemon.pool.observers.append(events.append)
        yield url, daemon, events, client


async def ask(client: httpx.AsyncClient, url: str, model: str) -> None:
    answer = await client.post(f"{url}/v1/chat/completions", json={"model": model, "messages": []})
    assert answer.status_code == 200, answer.text


def files(config: Config) -> list[Path]:
    assert config.kv_cache.dir is not None
    return sorted(p for p in Path(config.kv_cache.dir).glob("*/*") if p.is_file())


def of(events: list[PoolEvent], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


async def test_a_swapped_out_child_saves_its_slots_and_comes_back_with_them_also_after_a_restart(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config = two_models(tmp_path, fake_model)
    async with daemon_with_events(config, fake_binary) as (url, daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")  # a is stopped to make room: its slot 0 is saved first
        [saved] = of(events, KvSaved)
        assert (saved.model, saved.slot, saved.tokens) == ("a", 0, TOKENS)
        [file] = files(config)
        assert file.stat().st_size == saved.bytes and file.parent.name == saved.key
        listed = (await client.get(f"{url}/api/sidecars")).json()["kv_cache"]
        assert listed["keys"][saved.key]["slots"][0]["tokens"] == TOKENS and listed["enabled"]
        assert await trio.to_thread.run_sync(partial(main, ["ps", "--url", url])) == 0
        table = capsys.readouterr().out.splitlines()
        [a_row] = [row.split() for row in table if row.startswith(saved.key[:8])]
        assert a_row[1:3] == ["a", "saved"] and a_row[-2].startswith(f"{TOKENS}t/")
        assert table[-1].endswith("1 stopped with a saved KV cache")
        await ask(client, url, "a")  # back: restored before it was ready, and checked
        [restored] = of(events, KvRestored)
        assert (restored.slot, restored.tokens, restored.cached_tokens) == (0, TOKENS, TOKENS - 1)
        slots = (await client.get(f"{url}/slots", params={"model": "a"})).json()
        assert slots[0]["n_prompt_tokens"] == TOKENS
        assert daemon.pool is not None
        [child] = daemon.pool.sidecars()
        assert "--slot-save-path" in child.describe()["argv"]
        assert daemon.pool.describe_one(child)["kv_cache"]["slots"][0]["slot"] == 0
        scraped = samples((await client.get(f"{url}/metrics")).text)
        for action in ("save", "restore"):
            labels = {"model": "a", "action": action}
            assert value(scraped, "llama_sidecar_kv_cache_slots_total", **labels) == 1
            assert value(scraped, "llama_sidecar_kv_cache_bytes_total", **labels) == saved.bytes
            assert value(scraped, "llama_sidecar_kv_cache_seconds_count", **labels) == 1
        on_disk = sum(e.bytes for e in of(events, KvSaved))  # a's, and b's saved when a came back
        assert value(scraped, "llama_sidecar_kv_cache_store_bytes") == on_disk == 2 * saved.bytes
        assert value(scraped, "llama_sidecar_kv_cache_store_budget_bytes") > on_disk
    # Shut down: a's slot was saved again (the file replaced, not added to).
    [file_after] = [f for f in files(config) if f.parent.name == saved.key]
    assert file_after != file and not file.exists()
    async with daemon_with_events(config, fake_binary) as (url, daemon, events, client):
        await ask(client, url, "a")
        assert [e.cached_tokens for e in of(events, KvRestored)] == [TOKENS - 1]


async def test_a_child_that_dies_during_its_save_is_stopped_and_leaves_no_file(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = two_models(tmp_path, fake_model, {"crash_during_save": True})
    async with daemon_with_events(config, fake_binary) as (url, _daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")
        assert of(events, KvSaved) == [] and files(config) == []
        scraped = samples((await client.get(f"{url}/metrics")).text)
        assert value(scraped, "llama_sidecar_kv_cache_dropped_total", model="a", action="save") == 1
        listed = (await client.get(f"{url}/api/sidecars")).json()
        assert [s["model"] for s in listed["sidecars"]] == ["b"] and listed["kv_cache"]["keys"] == {}


async def test_a_save_slower_than_its_bound_is_given_up_and_the_stop_goes_on(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = two_models(tmp_path, fake_model, {"save_delay_s": 30}, timeout_s=0.5)
    async with daemon_with_events(config, fake_binary) as (url, _daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")
        assert of(events, KvSaved) == [] and files(config) == []
        [given_up] = of(events, KvDropped)
        assert (given_up.action, given_up.slot) == ("save", 0) and "kv_cache.timeout_s" in given_up.reason


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate", "cut or changed"),  # our size check
        ("zeros", "not a llama.cpp slot file"),  # our header check
        ("prompt", "llama-server answered 400"),  # it looks whole to us; llama-server's check refuses it
    ],
)
async def test_a_damaged_file_is_refused_removed_and_the_child_serves(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary, damage: str, reason: str
) -> None:
    config = two_models(tmp_path, fake_model)
    async with daemon_with_events(config, fake_binary) as (url, _daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")
        [file] = files(config)
        data = file.read_bytes()
        damaged = {
            "truncate": data[: len(data) // 2],
            "zeros": b"\0" * len(data),
            "prompt": data[:20] + struct.pack("<i", TOKENS - 1) + data[24:],  # its prompt's length
        }[damage]
        file.write_bytes(damaged)
        await ask(client, url, "a")
        [dropped] = of(events, KvDropped)
        assert dropped.action == "restore" and of(events, KvRestored) == []
        assert reason in dropped.reason, dropped.reason
        assert not file.exists()
        listed = (await client.get(f"{url}/api/sidecars")).json()["kv_cache"]
        assert dropped.key not in listed["keys"] and [k["model"] for k in listed["keys"].values()] == ["b"]


async def test_the_budget_lets_the_oldest_file_go_and_skips_a_save_that_cannot_fit(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    # A's file and B's are about 603 KB each: the budget holds one.
    config = two_models(tmp_path, fake_model, disk_budget="1 MB")
    async with daemon_with_events(config, fake_binary) as (url, _daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")  # a saved
        await ask(client, url, "a")  # b saved: a's file, the oldest, goes
        assert [e.model for e in of(events, KvSaved)] == ["a", "b"]
        [file] = files(config)
        assert file.parent.name == of(events, KvSaved)[1].key
    config = two_models(tmp_path, fake_model, disk_budget="100 KB")
    async with daemon_with_events(config, fake_binary) as (url, _daemon, events, client):
        await ask(client, url, "b")
        await ask(client, url, "a")  # b's file does not fit at all: skipped, said
        [skipped] = of(events, KvDropped)
        assert skipped.action == "save" and "kv_cache.disk_budget" in skipped.reason
        assert of(events, KvSaved) == [] and files(config) == []


async def test_a_model_whose_restore_does_not_help_is_marked_and_writes_no_more_files(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = two_models(tmp_path, fake_model, {"restore_forgets": True})
    async with daemon_with_events(config, fake_binary) as (url, daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")
        await ask(client, url, "a")  # restored, but the check finds nothing cached
        [dropped] = of(events, KvDropped)
        assert "found 0 cached" in dropped.reason
        key = dropped.key
        listed = (await client.get(f"{url}/api/sidecars")).json()["kv_cache"]
        assert "found 0 cached" in listed["keys"][key]["unhelpful"]
        assert not any(f.parent.name == key for f in files(config))
        await ask(client, url, "b")  # a stops again: nothing saved for it
        assert [e.model for e in of(events, KvSaved) if e.key == key] == ["a"]  # only the first one
        await ask(client, url, "a")
        assert daemon.pool is not None
        [child] = daemon.pool.sidecars()
        assert "--slot-save-path" not in child.describe()["argv"]


async def test_changed_flags_never_load_old_files_and_a_reload_removes_them(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    config = two_models(tmp_path, fake_model)
    async with daemon_with_events(config, fake_binary) as (url, _daemon, events, client):
        await ask(client, url, "a")
        await ask(client, url, "b")
        [old] = files(config)
    changed = make_config(
        tmp_path,
        {"a": {"path": fake_model("a", cached_tokens=TOKENS), "flags": ["-c", "1024"]}},
        kv_cache={},
    )
    async with daemon_with_events(changed, fake_binary) as (url, _daemon, events, client):
        # Its key is no longer served: removed when the store opened.
        assert files(changed) == [] and not old.exists()
        await ask(client, url, "a")
        assert of(events, KvRestored) == []


async def test_one_store_serves_one_daemon_at_a_time(tmp_path: Path, fake_model: Callable[..., str],
                                                     fake_binary: LlamaServerBinary) -> None:  # fmt: skip
    config = two_models(tmp_path, fake_model)
    routes = routes_for(config, fake_binary)
    assert config.kv_cache.dir is not None
    first, second = (KvCache(config.kv_cache, Path(config.kv_cache.dir)) for _ in range(2))
    first.open(routes)
    try:
        second.open(routes)
        assert first.unavailable is None
        assert second.unavailable is not None and "kv_cache.dir" in second.unavailable
        spec = routes.resolve("a")
        assert second.start_argv(spec, lambda _flag: True) == ()  # its children save nothing
        assert first.start_argv(spec, lambda _flag: True)[0] == "--slot-save-path"
    finally:
        first.close()
    second.open(routes)  # free again
    assert second.unavailable is None
    second.close()


async def test_a_client_cannot_make_the_daemon_read_or_write_a_file_of_its_choosing(
    tmp_path: Path, fake_model: Callable[..., str], fake_binary: LlamaServerBinary
) -> None:
    models = {"a": {"path": fake_model("a", cached_tokens=TOKENS), "allow_request_flags": True}}
    config = make_config(tmp_path, models)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with daemon_with_events(config, fake_binary) as (url, _daemon, _events, client):
        await ask(client, url, "a")
        tries = [
            f"{url}/slots/0?action=save&model=a",
            f"{url}/slots/0?action=restore",
            f"{url}/upstream/a/slots/0?action=save",
            f"{url}/upstream/a/slots/0?action=restore",
            f"{url}/upstream/a/%73lots/0?action=erase",  # an encoded spelling is the same path
            f"{url}/upstream/a/slots?action=save",
        ]
        for target in tries:
            refused = await client.post(target, json={"filename": "../../elsewhere/x.bin"})
            assert refused.status_code == 403, (target, refused.text)
            assert refused.json()["error"]["code"] == "slot_action_refused"
        for flags in (["--slot-save-path", str(elsewhere)], [f"--slot-save-path={elsewhere}"]):
            owned = await client.post(
                f"{url}/v1/chat/completions", json={"model": "a", "messages": [], "llama_flags": flags}
            )
            assert owned.status_code == 400 and "--slot-save-path" in owned.json()["error"]["message"]
        slots = await client.get(f"{url}/upstream/a/slots")  # reading stays open
        assert slots.status_code == 200 and slots.json()[0]["n_prompt_tokens"] == TOKENS
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(ConfigError, match="--slot-save-path"):
        make_config(tmp_path, {"a": {"path": fake_model("a"), "flags": ["--slot-save-path", str(elsewhere)]}})
