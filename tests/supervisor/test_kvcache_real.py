"""The KV cache across swaps with the real binary: SmolLM2 gets its prefix back, gemma-3 is marked.

A pool of one child and two models: asking for B swaps A out (its slot is saved),
asking for A again brings it back with the slot restored. llama-server's own
``timings.cache_n`` of A's next request says how much of its prompt it found
cached. The times (cold, warm, back after a swap with and without the cache) are
the bench's (``orchestrator bench cold --prompt-tokens``), not asserted here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.routing import LlamaServerBinary
from orchestrator.supervisor.events import KvDropped, KvRestored, KvSaved
from tests.conftest import make_config
from tests.supervisor.test_kvcache import daemon_with_events, files, of

pytestmark = pytest.mark.real



def system_prompt(rules: int) -> str:
    """An agent's long shared prefix, about 15 tokens a rule."""
    rule = "Rule {n}: answer question {n} about file src/module_{n}.py briefly."
    return " ".join(rule.format(n=n) for n in range(rules))


async def chat(
    client: httpx.AsyncClient, url: str, model: str, question: str, system: str = ""
) -> dict[str, Any]:
    """A chat request, or for a model without a chat template (gemma-3-270m), a plain completion."""
    text = f"{system}\n\nQuestion: {question}"
    if model.startswith("gemma"):
        request = {"prompt": text, "n_predict": 4}
        answer = await client.post(f"{url}/completion", json={"model": model, **request})
    else:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        request = {"model": model, "messages": messages, "max_tokens": 4}
        answer = await client.post(f"{url}/v1/chat/completions", json=request)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def pool_of_one(tmp_path: Path, model: Path, prefix: str = "", **kv_cache: Any) -> Any:
    """Two models of one GGUF (``prefix``: of their names), one child at a time."""
    return make_config(
        tmp_path,
        {
            f"{prefix}a": {"path": str(model), "flags": ["-c", "2048", "-t", "2", "--parallel", "1"]},
            f"{prefix}b": {"path": str(model), "flags": ["-c", "512", "-t", "1"]},
        },
        pool={"max_sidecars": 1},
        kv_cache=kv_cache,
    )


async def test_smollm2_comes_back_from_a_swap_and_a_restart_with_its_prompt_cached(
    tmp_path: Path, real_binary: LlamaServerBinary, demo_model: Path
) -> None:
    config = pool_of_one(tmp_path, demo_model)
    system = system_prompt(60)
    async with daemon_with_events(config, real_binary) as (url, _daemon, events, client):
        cold = await chat(client, url, "a", "What is rule 3?", system)
        prompt = cold["usage"]["prompt_tokens"]
        assert prompt > 500 and cold["timings"]["cache_n"] == 0
        await chat(client, url, "b", "Hi")  # a is swapped out: its slot saved
        [saved] = of(events, KvSaved)
        assert saved.model == "a" and saved.tokens >= prompt
        back = await chat(client, url, "a", "What is rule 4?", system)
        [restored] = of(events, KvRestored)
        assert restored.cached_tokens is not None and restored.cached_tokens >= saved.tokens - 1
        # The shared prefix (all but the question) was not processed again.
        assert back["timings"]["cache_n"] >= prompt - 16, back["timings"]
    async with daemon_with_events(config, real_binary) as (url, _daemon, events, client):
        again = await chat(client, url, "a", "What is rule 5?", system)
        assert again["timings"]["cache_n"] >= prompt - 16, again["timings"]
        assert len(of(events, KvRestored)) == 1


async def test_gemma3s_sliding_window_gets_nothing_back_so_its_key_is_marked_and_saves_no_more(
    tmp_path: Path, real_binary: LlamaServerBinary, gemma_model: Path
) -> None:
    # What llama-server does with a restored slot of a sliding-window model: it finds no usable
    # cache and processes the whole prompt again (measured: cache_n 0 after restoring 905 tokens).
    config = pool_of_one(tmp_path, gemma_model, "gemma-", min_tokens=64)
    system = system_prompt(12)
    async with daemon_with_events(config, real_binary) as (url, _daemon, events, client):
        await chat(client, url, "gemma-a", "What is rule 3?", system)
        await chat(client, url, "gemma-b", "Hi")
        [saved] = of(events, KvSaved)
        await chat(client, url, "gemma-a", "What is rule 4?", system)
        [dropped] = of(events, KvDropped)
        assert dropped.key == saved.key and "processed the prompt again" in dropped.reason
        assert not any(f.parent.name == saved.key for f in files(config))
        await chat(client, url, "gemma-b", "Hi")  # a stops again: nothing is saved for it
        assert [e.key for e in of(events, KvSaved)].count(saved.key) == 1
        listed = (await client.get(f"{url}/api/sidecars")).json()["kv_cache"]
        assert listed["keys"][saved.key]["unhelpful"]
