"""The memory estimate on made-up models (weights by device, KV, compute) and llama-server's accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import flags
from orchestrator.footprint import (
    HOST,
    Footprint,
    MiB,
    ModelFacts,
    Settings,
    Tensor,
    estimate,
    host_extras,
    kv_cells,
    layer_devices,
    parse_breakdown,
    retarget,
)


def model(n_layer: int = 4, **overrides: object) -> ModelFacts:
    """A small dense model: 10 MiB per layer, 8 MiB of embeddings, 8 MiB of output."""
    tensors = [Tensor("token_embd.weight", 8 * MiB), Tensor("output.weight", 8 * MiB)]
    tensors += [Tensor(f"blk.{i}.ffn_up.weight", 10 * MiB) for i in range(n_layer)]
    fields: dict[str, object] = dict(
        architecture="llama", n_layer=n_layer, n_embd=512, n_ff=1024, n_head=8, n_head_kv=2,
        head_dim_k=64, head_dim_v=64, n_ctx_train=8192, n_vocab=32000, tensors=tuple(tensors),
    )  # fmt: skip
    fields.update(overrides)
    return ModelFacts(**fields)  # type: ignore[arg-type]


def settings(*tokens: str, facts: ModelFacts | None = None) -> Settings:
    return Settings.of(flags.canonicalise(flags.parse(list(tokens))), (facts or model()).n_ctx_train)


def test_settings_take_llama_servers_defaults_where_flags_say_nothing() -> None:
    plain = settings()
    assert (plain.n_ctx, plain.slots, plain.kv_unified, plain.ubatch, plain.flash_attn) == (
        8192,
        4,
        True,
        512,
        True,
    )
    assert plain.gpu_layers is None and plain.prompt_cache_mib == 8192
    given = settings(
        *("-c", "2048", "-np", "2", "--no-kv-unified", "-ctk", "q8_0", "-ub", "1024", "-b", "256"),
        *("-fa", "off", "-ngl", "3", "-ncmoe", "1", "-ot", "blk\\.1\\.=CPU,exps=CUDA1", "--cache-ram", "0"),
    )
    assert (given.n_ctx, given.slots, given.kv_unified, given.type_k, given.type_v) == (
        2048,
        2,
        False,
        "q8_0",
        "f16",
    )
    assert given.ubatch == 256  # no more than the logical batch
    assert (given.flash_attn, given.gpu_layers, given.n_cpu_moe, given.prompt_cache_mib) == (False, 3, 1, 0)
    assert given.overrides == (("blk\\.1\\.", "CPU"), ("exps", "CUDA1"))
    assert settings("-c", "0").n_ctx == 8192  # 0: the model's trained context
    assert settings("-ngl", "all").gpu_layers is None and settings("--device", "none").devices == ()


def test_a_cpu_only_child_has_everything_on_the_host() -> None:
    facts = model()
    footprint = estimate(facts, settings("-c", "2048"))
    assert set(footprint.devices) == {HOST}
    parts = footprint.parts[HOST]
    assert parts["model"] == 56 * MiB  # every tensor
    assert parts["context"] == 2048 * 4 * 2 * (64 + 64) * 2  # cells x layers x kv heads x (k+v dims) x f16
    assert parts["compute"] == 512 * 4 * (3 * 1024 + 5 * 512) + 512 * 2 * 2048  # graph + mask
    no_fa = estimate(facts, settings("-c", "2048", "-fa", "off")).parts[HOST]["compute"]
    assert no_fa - parts["compute"] == 8 * 2048 * 512 * 4  # the attention scores


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ((), ["CUDA0", "CUDA0", "CUDA1", "CUDA1"]),  # all layers, split by memory (equal here)
        (("-ngl", "2"), [HOST, HOST, "CUDA0", "CUDA1"]),  # the last ones go to the GPUs
        (("-ngl", "0"), [HOST] * 4),
        (("--device", "CUDA1"), ["CUDA1"] * 4),
    ],
)
def test_layers_go_to_the_gpus_last_first(tokens: tuple[str, ...], expected: list[str]) -> None:
    assert layer_devices(model(), settings(*tokens), [("CUDA0", 8 << 30), ("CUDA1", 8 << 30)]) == expected
    assert layer_devices(model(), settings(*tokens), []) == [HOST] * 4  # no GPU


def test_weights_follow_their_layer_and_overrides_win() -> None:
    gpus = [("CUDA0", 24 << 30)]
    offloaded = estimate(model(), settings("-c", "512"), gpus)
    assert offloaded.parts["CUDA0"]["model"] == 48 * MiB  # 4 layers + output
    assert offloaded.parts[HOST]["model"] == 8 * MiB  # the token embeddings stay
    partial = estimate(model(), settings("-c", "512", "-ngl", "3"), gpus)
    assert partial.parts["CUDA0"]["model"] == 30 * MiB and partial.parts[HOST]["model"] == 26 * MiB
    overridden = estimate(model(), settings("-c", "512", "-ot", "blk\\.3\\.=CPU"), gpus)
    assert overridden.parts[HOST]["model"] == 18 * MiB
    experts = model(
        n_layer=2, tensors=tuple(Tensor(f"blk.{i}.ffn_up_exps.weight", 100 * MiB) for i in range(2))
    )
    moe = estimate(experts, settings("-c", "512", "-ncmoe", "1"), gpus)
    assert moe.parts[HOST]["model"] == 100 * MiB and moe.parts["CUDA0"]["model"] == 100 * MiB
    assert (
        offloaded.parts["CUDA0"]["context"] > 0 and offloaded.parts[HOST]["context"] == 0
    )  # KV with its layer
    kv_on_host = estimate(model(), settings("-c", "512", "--no-kv-offload"), gpus)
    assert kv_on_host.parts[HOST]["context"] > 0 and kv_on_host.parts["CUDA0"]["context"] == 0


def test_sliding_window_layers_keep_a_window_of_cells() -> None:
    gemma = model(n_layer=6, architecture="gemma3", n_swa=512)  # layers 0-4 windowed, 5 full
    assert kv_cells(gemma, settings("-c", "8192"), 5) == (8192, 1)
    assert kv_cells(gemma, settings("-c", "8192"), 0) == (2560, 1)  # 512 x 4 slots + ubatch 512
    assert kv_cells(gemma, settings("-c", "8192", "-np", "1"), 0) == (1024, 1)
    assert kv_cells(gemma, settings("-c", "4096", "-np", "2", "--no-kv-unified"), 0) == (1024, 2)
    assert kv_cells(gemma, settings("-c", "1024"), 0) == (1024, 1)  # never more than the context
    assert kv_cells(gemma, settings("-c", "8192", "--swa-full"), 0) == (8192, 1)
    assert kv_cells(model(n_swa=512), settings("-c", "8192"), 0) == (8192, 1)  # llama: no pattern known


def test_host_extras_count_what_a_child_grows_into() -> None:
    extras = host_extras(model(), settings("--cache-ram", "1024"))
    assert extras == 32000 * 4 * 4 + 1024 * MiB + 32 * MiB  # output buffer, prompt cache, the process
    assert host_extras(None, settings("--cache-ram", "0")) == 32 * MiB


# llama-server's -lv 4 log, with a GPU row as CUDA builds print it (the rest as the real binary does).
LOADED = (Path(__file__).parent / "fixtures" / "breakdown.log").read_text()


def test_llama_servers_accounting_is_read_from_its_log() -> None:
    learned = parse_breakdown(LOADED.splitlines())
    assert learned is not None and learned.source == "learned"
    assert learned.parts[HOST] == {"model": 234 * MiB, "context": 36 * MiB, "compute": 22 * MiB}  # + repack
    assert learned.parts["CUDA0"] == {"model": 12000 * MiB, "context": 600 * MiB, "compute": 300 * MiB}
    assert learned.devices == {"CUDA0": 12900 * MiB, HOST: 292 * MiB}  # the load's table, not the exit's
    assert parse_breakdown(["no accounting here"]) is None


def test_a_learned_footprint_follows_the_gpus_placement_chooses() -> None:
    def parts(model: int, context: int, compute: int) -> dict[str, int]:
        return {"model": model * MiB, "context": context * MiB, "compute": compute * MiB}

    learned = Footprint(
        {HOST: 120 * MiB, "CUDA0": 1500 * MiB},
        {HOST: parts(100, 10, 10), "CUDA0": parts(1000, 300, 200)},
        "learned",
    )
    moved = retarget(learned, ["CUDA1"])
    assert moved.devices == {HOST: 120 * MiB, "CUDA1": 1500 * MiB} and moved.source == "learned"
    split = retarget(learned, ["CUDA0", "CUDA1"], [3, 1])
    assert split.parts["CUDA0"] == parts(750, 225, 200)  # weights and cache by the split
    assert split.parts["CUDA1"] == parts(250, 75, 200)  # each GPU its own compute buffer
    assert retarget(split, ["CUDA2"]).devices["CUDA2"] == 1500 * MiB  # and back onto one
    host_only = Footprint({HOST: 500 * MiB}, {HOST: parts(400, 50, 50)}, "learned")
    assert retarget(host_only, ["CUDA1"]) == host_only  # nothing on a GPU to move
