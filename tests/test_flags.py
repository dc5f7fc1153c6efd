"""The flag model: what --help declares, parsing and validation, canonical form, layers, the key."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import flags
from orchestrator.errors import FlagError
from orchestrator.flaghelp import load_flag_table
from orchestrator.flags import Arity, Flag, FlagTable, builtin_table
from orchestrator.routing import LlamaServerBinary

BUILTIN = builtin_table()
STRICT = FlagTable(BUILTIN.specs, authoritative=True, source="test")


def test_the_real_binarys_help_declares_what_we_rely_on(real_binary: LlamaServerBinary) -> None:
    table = load_flag_table(real_binary)
    assert table.authoritative and len(table.specs) > 200
    ctx = table.lookup("-c")
    assert ctx is not None and ctx.name == "--ctx-size" and ctx.arity is Arity.VALUE
    flash = table.lookup("--flash-attn")
    assert flash is not None and flash.arity is Arity.OPTIONAL and flash.choices == ("on", "off", "auto")
    spec_type = table.lookup("--spec-type")
    assert spec_type is not None and "draft-mtp" in spec_type.choices and spec_type.list_choices
    cache_k = table.lookup("-ctk")
    assert cache_k is not None and "q8_0" in cache_k.choices
    removed = table.lookup("--draft-max")
    assert removed is not None and removed.removed and "--spec-draft-n-max" in removed.removed
    two_values = table.lookup("--control-vector-layer-range")
    assert two_values is not None and two_values.nargs == 2
    assert load_flag_table(real_binary) is table  # learned once, then cached


def test_unreadable_help_falls_back_to_the_builtin_table(tmp_path: pytest.TempPathFactory) -> None:
    not_llama = LlamaServerBinary("/bin/true", "test")
    assert load_flag_table(not_llama) is BUILTIN


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["-c", "4096"], [Flag.of("--ctx-size", "4096")]),
        (["--ctx-size=4096"], [Flag.of("--ctx-size", "4096")]),
        (["--ctx_size", "4096"], [Flag.of("--ctx-size", "4096")]),
        (["-fa"], [Flag.of("--flash-attn", "on")]),
        (["-fa", "-c", "1"], [Flag.of("--flash-attn", "on"), Flag.of("--ctx-size", "1")]),
        (["--flash-attn", "off"], [Flag.of("--flash-attn", "off")]),
        (["-fa", "1"], [Flag.of("--flash-attn", "on")]),
        (["-fa=0"], [Flag.of("--flash-attn", "off")]),
        (["-fa", "-1"], [Flag.of("--flash-attn", "auto")]),
        (["-ngl", "-1"], [Flag.of("--gpu-layers", "-1")]),  # a negative number is a value
        (["--n-gpu-layers", "all"], [Flag.of("--gpu-layers", "all")]),
        (["--jinja", "--no-warmup"], [Flag.of("--jinja"), Flag.of("--no-warmup")]),
        (["--spec-type", "draft-mtp,ngram-simple"], [Flag.of("--spec-type", "draft-mtp,ngram-simple")]),
        (
            ["-ctk", "q8_0", "-ctv", "f16"],
            [Flag.of("--cache-type-k", "q8_0"), Flag.of("--cache-type-v", "f16")],
        ),
        (["--control-vector-layer-range", "2", "9"], [Flag.of("--control-vector-layer-range", "2", "9")]),
        (["--temp", "0.7", "--top-p", "1"], [Flag.of("--temp", "0.7"), Flag.of("--top-p", "1")]),
    ],
)
def test_parse(tokens: list[str], expected: list[Flag]) -> None:
    assert list(flags.parse(tokens, STRICT)) == expected


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["4096"], "'4096' is a value with no flag before it"),
        (["-c"], "-c expects a value (N)"),
        (["-c", "--jinja"], "-c expects a value"),
        (["--jinja=yes"], "--jinja is a switch and takes no value"),
        (["--ctx-sise", "1"], "--ctx-sise is not a flag of this llama-server; did you mean --ctx-size?"),
        (["-fa", "maybe"], "-fa: 'maybe' is not one of on, off, auto"),
        (["--spec-type", "draft-mtp,warp"], "--spec-type: 'warp' is not one of none, draft-simple"),
        (["-ctk", "q9_0"], "-ctk: 'q9_0' is not one of f32, f16"),
        (["-c", "-5"], "-c: expected a value >= 0, got -5"),
        (["-c", "big"], "-c: expected an integer, got 'big'"),
        (["-ngl", "-2"], "-ngl: expected a value >= -1, got -2"),
        (["-ngl", "most"], "-ngl: expected an integer or one of auto, all, got 'most'"),
        (["-np", "0"], "-np: expected a value >= 1, got 0"),
        (["--top-p", "1.5"], "--top-p: expected a value <= 1, got 1.5"),
        (["--poll", "101"], "--poll: expected a value <= 100, got 101"),
        (
            ["--draft-max", "4"],
            "--draft-max was removed from llama.cpp: the argument has been removed. use --spec-d",
        ),
        (["--control-vector-layer-range", "1"], "expects 2 values (START END)"),
        (["--port", "1"], "--port is set by the supervisor"),
        (["-m", "x.gguf"], "-m is set by the supervisor"),
        (["--host=0.0.0.0"], "--host is set by the supervisor"),
        (["-hf", "org/repo"], "-hf is set by the supervisor"),
        (["--models-dir", "/"], "--models-dir is set by the supervisor"),
        (["--api-key", "k"], "--api-key is set by the supervisor"),
        (["--log-file", "f"], "--log-file is set by the supervisor"),
        (["-cl"], "-cl is set by the supervisor"),
        (["--version"], "--version is set by the supervisor"),
        (["-a", "name"], "-a is set by the supervisor"),
        (["-c", "1\n--port 2"], "contains a control character"),
        (["--jinja"] * 257, "too many flags: 257 tokens"),
        (["--chat-template", "x" * 33_000], "at most 256 tokens and 32 KiB"),
    ],
)
def test_every_problem_names_the_flag_and_the_reason(tokens: list[str], message: str) -> None:
    with pytest.raises(FlagError) as raised:
        flags.parse(tokens, STRICT)
    assert any(message in problem for problem in raised.value.problems), raised.value.problems


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(FlagError) as raised:
        flags.parse(["--port", "1", "-c", "x", "stray", "--nope"], STRICT)
    assert len(raised.value.problems) == 4


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["--lora", "/etc/passwd"], "--lora names a file on the server"),
        (["-md", "draft.gguf"], "-md names a file on the server"),
        (["--chat-template-file", "t.jinja"], "names a file on the server"),
        (["--rpc", "10.0.0.1:50052"], "--rpc is not allowed per request"),
        (["--tools", "all"], "--tools is not allowed per request"),
        (["--device", "CUDA1"], "--device is not allowed per request"),  # the configuration's, or the pool's
        (["-ts", "3,1"], "-ts is not allowed per request"),
    ],
)
def test_per_request_flags_may_not_reach_files_or_the_network(tokens: list[str], message: str) -> None:
    flags.parse(tokens, STRICT)  # fine in a configuration
    with pytest.raises(FlagError, match=message):
        flags.parse(tokens, STRICT, per_request=True)


def test_the_fallback_table_passes_unknown_flags_with_a_note() -> None:
    parsed = flags.parse_with_notes(["--brand-new-flag", "3", "--another"], BUILTIN)
    assert parsed.flags == (Flag.of("--brand-new-flag", "3"), Flag.of("--another"))
    assert "passed through unchecked" in parsed.notes[0]
    with pytest.raises(FlagError, match="--port is set by the supervisor"):
        flags.parse(["--port", "1"], BUILTIN)  # owned flags are refused with any table


def test_canonical_form_last_wins_sorted_and_repeatables_kept_in_order() -> None:
    parsed = flags.parse(["-c", "1", "--lora", "b", "--jinja", "--lora", "a", "--ctx-size", "2"], STRICT)
    assert flags.canonicalise(parsed) == (
        Flag.of("--ctx-size", "2"),
        Flag.of("--jinja"),
        Flag.of("--lora", "b"),
        Flag.of("--lora", "a"),
    )


def test_explicit_flags_survive_and_inherited_ones_are_shadowed() -> None:
    base = flags.parse(["-c", "4096", "--threads", "2", "--lora", "base"], STRICT)
    agent = flags.parse(["-c", "8192", "--lora", "mine"], STRICT)
    inherited, explicit = flags.merge_layers([base, agent])
    assert inherited == (Flag.of("--threads", "2"),)
    assert explicit == (Flag.of("--ctx-size", "8192"), Flag.of("--lora", "mine"))


def test_equivalent_spellings_give_one_key() -> None:
    def key(*tokens: str) -> str:
        return flags.sidecar_key("m", flags.effective([flags.parse(list(tokens), STRICT)]))

    assert key("-c", "4096", "-fa") == key("--flash-attn", "on", "--ctx-size=4096")
    assert key("-c", "4096", "-fa") == key("-fa", "1", "--ctx_size", "4096")
    assert key("-ngl", "99") == key("--n-gpu-layers", "99") == key("--gpu-layers=99")
    assert key("-c", "4096") != key("-c", "2048")
    assert flags.sidecar_key("m", ()) != flags.sidecar_key("other", ())


_GROUPS = [
    ["-c", "512"], ["--ctx-size", "1024"], ["-fa"], ["-fa", "off"], ["--jinja"], ["-t", "2"], ["-ngl", "-1"],
    ["--temp", "0.5"],
]  # fmt: skip


@given(st.lists(st.sampled_from(_GROUPS), max_size=8), st.integers(0, 2**32))
def test_key_ignores_the_order_of_distinct_flags(groups: list[list[str]], seed: int) -> None:
    # One occurrence per flag, so that reordering cannot change which value is last.
    unique = list({flags.parse(group, STRICT)[0].name: group for group in groups}.values())
    shuffled = unique[:]
    random.Random(seed).shuffle(shuffled)

    def key(ordered: list[list[str]]) -> str:
        return flags.sidecar_key("m", flags.effective([flags.parse([t for g in ordered for t in g], STRICT)]))

    assert key(unique) == key(shuffled)


_TOKENS = st.sampled_from(
    ["-c", "4096", "-fa", "on", "maybe", "--jinja", "--lora", "x", "-1", "--k=v", "--port", "-ngl", "all",
     "--spec-type", "draft-mtp", "--ctx-size=12", "-ctk", "q8_0", "--draft-max", "\x00", "=", "-", "--"]
)  # fmt: skip


@given(st.lists(st.one_of(_TOKENS, st.text(max_size=6)), max_size=12))
def test_any_tokens_give_flags_llama_server_accepts_or_readable_problems(tokens: list[str]) -> None:
    try:
        parsed = flags.parse(tokens, STRICT)
    except FlagError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
        return
    canonical = flags.canonicalise(parsed)
    # Rendering and parsing again changes nothing (idempotent), and every flag is one the table declares.
    assert flags.canonicalise(flags.parse(flags.render(canonical), STRICT)) == canonical
    assert all(STRICT.lookup(flag.name) is not None for flag in canonical)


def test_a_negated_switch_keeps_its_meaning_and_replaces_its_positive() -> None:
    table = flags.builtin_table()
    for tokens, expected in (
        (["--no-kv-unified"], [flags.Flag("--no-kv-unified")]),
        (["-no-kvu"], [flags.Flag("--no-kv-unified")]),
        (["-kvu"], [flags.Flag("--kv-unified")]),
        (["-nkvo"], [flags.Flag("--no-kv-offload")]),
        (["--repack", "-nr"], [flags.Flag("--no-repack")]),  # the later one wins
        (["-nr", "--repack"], [flags.Flag("--repack")]),
        (["--no-webui"], [flags.Flag("--no-ui")]),
    ):
        assert list(flags.canonicalise(flags.parse(tokens, table))) == expected, tokens
    model, agent = flags.parse(["--kv-unified", "-c", "512"], table), flags.parse(["--no-kv-unified"], table)
    merged = flags.effective([model, agent])
    assert merged == (flags.Flag("--ctx-size", ("512",)), flags.Flag("--no-kv-unified"))
