"""The flag model: parsing, canonical form, layer merging, the key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import flags
from orchestrator.errors import FlagError
from orchestrator.flags import Flag


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["-c", "4096"], [Flag("--ctx-size", "4096")]),
        (["--ctx-size=4096"], [Flag("--ctx-size", "4096")]),
        (["--ctx_size", "4096"], [Flag("--ctx-size", "4096")]),
        (["-fa"], [Flag("--flash-attn", "on")]),
        (["-fa", "-c", "1"], [Flag("--flash-attn", "on"), Flag("--ctx-size", "1")]),
        (["--flash-attn", "off"], [Flag("--flash-attn", "off")]),
        (["-fa", "1"], [Flag("--flash-attn", "on")]),
        (["-fa", "auto"], [Flag("--flash-attn", "auto")]),
        (["-ngl", "-1"], [Flag("--n-gpu-layers", "-1")]),  # a negative number is a value
        (["--jinja", "--mlock"], [Flag("--jinja"), Flag("--mlock")]),
        (["--spec-type", "draft-mtp"], [Flag("--spec-type", "draft-mtp")]),
        (["--some-new-flag", "x", "--other-new"], [Flag("--some-new-flag", "x"), Flag("--other-new")]),
    ],
)
def test_parse(tokens: list[str], expected: list[Flag]) -> None:
    assert list(flags.parse(tokens)) == expected


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["4096"], "'4096' is a value with no flag before it"),
        (["-c"], "-c expects a value"),
        (["-c", "--jinja"], "-c expects a value"),
        (["--jinja=yes"], "--jinja is a switch and takes no value"),
        (["--port", "1"], "--port is set by the supervisor"),
        (["-m", "x.gguf"], "-m is set by the supervisor"),
        (["--host=0.0.0.0"], "--host is set by the supervisor"),
        (["-hf", "org/repo"], "-hf is set by the supervisor"),
        (["--models-dir", "/"], "--models-dir is set by the supervisor"),
        (["--api-key", "k"], "--api-key is set by the supervisor"),
        (["--log-file", "f"], "--log-file is set by the supervisor"),
        (["--version"], "--version is set by the supervisor"),
    ],
)
def test_parse_errors_name_the_flag(tokens: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message):
        flags.parse(tokens)


def test_canonical_form_last_wins_sorted_and_repeatables_kept_in_order() -> None:
    parsed = flags.parse(["-c", "1", "--lora", "b", "--jinja", "--lora", "a", "--ctx-size", "2"])
    assert flags.canonicalise(parsed) == (
        Flag("--ctx-size", "2"),
        Flag("--jinja"),
        Flag("--lora", "b"),
        Flag("--lora", "a"),
    )


def test_explicit_flags_survive_and_inherited_ones_are_shadowed() -> None:
    base = flags.parse(["-c", "4096", "--threads", "2", "--lora", "base"])
    agent = flags.parse(["-c", "8192", "--lora", "mine"])
    inherited, explicit = flags.merge_layers([base, agent])
    assert inherited == (Flag("--threads", "2"),)
    assert explicit == (Flag("--ctx-size", "8192"), Flag("--lora", "mine"))


def test_equivalent_spellings_give_one_key() -> None:
    one = flags.effective([flags.parse(["-c", "4096", "-fa"])])
    two = flags.effective([flags.parse(["--flash-attn", "on", "--ctx-size=4096"])])
    assert flags.sidecar_key("m", one) == flags.sidecar_key("m", two)
    assert flags.sidecar_key("m", one) != flags.sidecar_key("other", one)
    assert flags.sidecar_key("m", one) != flags.sidecar_key(
        "m", flags.effective([flags.parse(["-c", "2048"])])
    )


_single = st.sampled_from(
    [
        ["-c", "512"],
        ["--ctx-size", "1024"],
        ["-fa"],
        ["-fa", "off"],
        ["--jinja"],
        ["-t", "2"],
        ["-ngl", "-1"],
        ["--temp", "0.5"],
    ]
)


@given(st.lists(_single, max_size=8), st.randoms())
def test_key_ignores_the_order_of_distinct_flags(groups: list[list[str]], rng: object) -> None:
    # Keep one occurrence per flag so reordering cannot change which value is last.
    unique = {flags.parse(group)[0].name: group for group in groups}
    ordered = [token for group in unique.values() for token in group]
    shuffled_groups = list(unique.values())
    rng.shuffle(shuffled_groups)  # type: ignore[attr-defined]
    shuffled = [token for group in shuffled_groups for token in group]
    key = flags.sidecar_key("m", flags.effective([flags.parse(ordered)]))
    assert key == flags.sidecar_key("m", flags.effective([flags.parse(shuffled)]))


@given(
    st.lists(
        st.sampled_from(["-c", "4096", "-fa", "on", "--jinja", "--lora", "x", "-1", "--k=v", "--port", "z"]),
        max_size=10,
    )
)
def test_any_tokens_parse_or_fail_readably_and_canonical_form_is_idempotent(tokens: list[str]) -> None:
    try:
        parsed = flags.parse(tokens)
    except FlagError as error:
        assert str(error)
        return
    canonical = flags.canonicalise(parsed)
    assert flags.canonicalise(flags.parse(flags.render(canonical))) == canonical
