"""The llama-server flag model: parse, canonicalise, merge layers, render, hash.

Pure logic. A flag list given by a user (in base_args, a model, an agent) is
parsed into ``Flag`` values against a ``FlagTable``; canonical form means long
names instead of aliases, ``--k=v`` split, legacy spellings mapped, last value
wins for single-valued flags and a stable order, so equivalent spellings give
the same sidecar key. Flags the supervisor owns are refused.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.errors import FlagError


class Arity(enum.Enum):
    """How many values a flag takes."""

    NONE = "none"
    VALUE = "value"
    OPTIONAL = "optional"  # consumes the next token only when it is one of ``choices``


@dataclass(frozen=True)
class FlagSpec:
    """What llama-server declares about one flag."""

    name: str
    aliases: tuple[str, ...] = ()
    arity: Arity = Arity.VALUE
    choices: tuple[str, ...] = ()
    repeatable: bool = False
    bare_value: str | None = None  # the value an OPTIONAL flag means when given bare
    value_aliases: tuple[tuple[str, str], ...] = ()  # legacy value -> canonical value


@dataclass(frozen=True, order=True)
class Flag:
    """One canonical flag with its value (None for switches)."""

    name: str
    value: str | None = None


_ON_OFF_AUTO = ("on", "off", "auto")

# The flags the supervisor decides; a user may never set them. Aliases resolve
# through the table below first, so only canonical names are listed.
OWNED_FLAGS = frozenset(
    {
        "--host", "--port", "--model", "--model-url", "--docker-repo", "--hf-repo",
        "--hf-file", "--hf-token", "--hf-repo-draft", "--hf-repo-v", "--hf-file-v",
        "--alias", "--api-key", "--api-key-file", "--ssl-key-file", "--ssl-cert-file",
        "--path", "--api-prefix", "--reuse-port", "--log-file", "--log-disable", "--help",
        "--usage", "--version", "--list-devices", "--cache-list", "--completion-bash",
    }
)  # fmt: skip
OWNED_PREFIXES = ("--models-", "--ssl-", "--api-key", "--hf-", "--no-models-")

BUILTIN_SPECS: tuple[FlagSpec, ...] = (
    # supervisor-owned (listed so their short aliases resolve and are refused)
    FlagSpec("--model", ("-m",)),
    FlagSpec("--alias", ("-a",)),
    FlagSpec("--hf-repo", ("-hf", "-hfr")),
    FlagSpec("--hf-file", ("-hff",)),
    FlagSpec("--hf-token", ("-hft",)),
    FlagSpec("--hf-repo-draft", ("-hfd", "-hfrd")),
    FlagSpec("--hf-repo-v", ("-hfv", "-hfrv")),
    FlagSpec("--hf-file-v", ("-hffv",)),
    FlagSpec("--model-url", ("-mu",)),
    FlagSpec("--docker-repo", ("-dr",)),
    FlagSpec("--help", ("-h", "--usage"), Arity.NONE),
    FlagSpec("--log-disable", (), Arity.NONE),
    FlagSpec("--reuse-port", (), Arity.NONE),
    FlagSpec("--version", (), Arity.NONE),
    FlagSpec("--list-devices", (), Arity.NONE),
    FlagSpec("--cache-list", (), Arity.NONE),
    FlagSpec("--completion-bash", (), Arity.NONE),
    # context, batching, threads
    FlagSpec("--ctx-size", ("-c",)),
    FlagSpec("--n-predict", ("-n", "--predict")),
    FlagSpec("--batch-size", ("-b",)),
    FlagSpec("--ubatch-size", ("-ub",)),
    FlagSpec("--threads", ("-t",)),
    FlagSpec("--threads-batch", ("-tb",)),
    FlagSpec(
        "--threads-http",
    ),
    FlagSpec("--parallel", ("-np",)),
    FlagSpec(
        "--keep",
    ),
    FlagSpec("--cont-batching", ("-cb",), Arity.NONE),
    FlagSpec("--no-cont-batching", ("-nocb",), Arity.NONE),
    FlagSpec(
        "--cache-reuse",
    ),
    FlagSpec("--timeout", ("-to",)),
    # memory and devices
    FlagSpec("--n-gpu-layers", ("-ngl", "--gpu-layers")),
    FlagSpec("--split-mode", ("-sm",)),
    FlagSpec("--tensor-split", ("-ts",)),
    FlagSpec("--main-gpu", ("-mg",)),
    FlagSpec("--device", ("-dev",)),
    FlagSpec("--cpu-moe", ("-cmoe",), Arity.NONE),
    FlagSpec("--n-cpu-moe", ("-ncmoe",)),
    FlagSpec("--override-tensor", ("-ot",), repeatable=True),
    FlagSpec("--mlock", (), Arity.NONE),
    FlagSpec("--no-mmap", (), Arity.NONE),
    FlagSpec("--no-repack", ("-nr",), Arity.NONE),
    FlagSpec("--cache-type-k", ("-ctk",)),
    FlagSpec("--cache-type-v", ("-ctv",)),
    FlagSpec(
        "--flash-attn",
        ("-fa",),
        Arity.OPTIONAL,
        choices=(*_ON_OFF_AUTO, "1", "0", "-1"),
        bare_value="on",
        value_aliases=(("1", "on"), ("0", "off"), ("-1", "auto")),
    ),
    # model behaviour
    FlagSpec(
        "--chat-template",
    ),
    FlagSpec(
        "--chat-template-file",
    ),
    FlagSpec("--jinja", (), Arity.NONE),
    FlagSpec("--no-jinja", (), Arity.NONE),
    FlagSpec(
        "--reasoning-format",
    ),
    FlagSpec(
        "--reasoning-budget",
    ),
    FlagSpec("--embeddings", ("--embedding", "--emb"), Arity.NONE),
    FlagSpec("--reranking", ("--rerank",), Arity.NONE),
    FlagSpec(
        "--pooling",
    ),
    FlagSpec("--lora", (), repeatable=True),
    FlagSpec("--control-vector", (), repeatable=True),
    FlagSpec("--override-kv", (), repeatable=True),
    FlagSpec(
        "--rope-scaling",
    ),
    FlagSpec(
        "--rope-freq-base",
    ),
    FlagSpec(
        "--rope-freq-scale",
    ),
    # sampling defaults
    FlagSpec(
        "--temp",
    ),
    FlagSpec(
        "--top-k",
    ),
    FlagSpec(
        "--top-p",
    ),
    FlagSpec(
        "--min-p",
    ),
    FlagSpec("--seed", ("-s",)),
    # speculative decoding
    FlagSpec(
        "--spec-type",
    ),
    FlagSpec(
        "--spec-draft-n-max",
    ),
    FlagSpec("--spec-draft-model", ("-md",)),
    # server behaviour
    FlagSpec("--metrics", (), Arity.NONE),
    FlagSpec("--slots", (), Arity.NONE),
    FlagSpec("--no-slots", (), Arity.NONE),
    FlagSpec("--no-webui", (), Arity.NONE),
    FlagSpec(
        "--slot-save-path",
    ),
    FlagSpec("--verbose", ("-v",), Arity.NONE),
    FlagSpec("--log-verbosity", ("-lv",)),
    FlagSpec("--log-timestamps", (), Arity.NONE),
    FlagSpec("--log-prefix", (), Arity.NONE),
    FlagSpec(
        "--log-colors",
    ),
)

_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class FlagTable:
    """Every known spelling of every flag, resolved to its spec."""

    def __init__(self, specs: Iterable[FlagSpec]) -> None:
        self._by_spelling: dict[str, FlagSpec] = {}
        for spec in specs:
            for spelling in (spec.name, *spec.aliases):
                self._by_spelling[spelling] = spec

    def lookup(self, spelling: str) -> FlagSpec | None:
        return self._by_spelling.get(spelling)


BUILTIN_TABLE = FlagTable(BUILTIN_SPECS)


def is_owned(name: str) -> bool:
    """Whether a canonical flag name belongs to the supervisor."""
    return name in OWNED_FLAGS or name.startswith(OWNED_PREFIXES)


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NUMBER.match(token)


def _spelling(token: str) -> str:
    # llama.cpp's long names use dashes; users often write underscores.
    return token.replace("_", "-") if token.startswith("--") else token


def parse(tokens: Sequence[str], table: FlagTable = BUILTIN_TABLE) -> tuple[Flag, ...]:
    """Parse an argv fragment into flags, in the order given.

    Raises FlagError naming the token for a bare value, a missing value, a
    value given to a switch, or a supervisor-owned flag.
    """
    flags: list[Flag] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not _looks_like_flag(token):
            raise FlagError(
                f"{token!r} is a value with no flag before it; expected flags such as '--ctx-size 4096'"
            )
        spelling, has_inline, inline = token.partition("=")
        spec = table.lookup(_spelling(spelling))
        name = spec.name if spec else _spelling(spelling)
        if is_owned(name):
            raise FlagError(
                f"{spelling} is set by the supervisor (host, port, model, aliases, keys, "
                f"logging are owned); remove it"
            )
        value: str | None
        following = tokens[index] if index < len(tokens) else None
        if has_inline:
            if spec is not None and spec.arity is Arity.NONE:
                raise FlagError(f"{spelling} is a switch and takes no value, got {inline!r}")
            value = inline
        elif spec is not None and spec.arity is Arity.NONE:
            value = None
        elif spec is not None and spec.arity is Arity.OPTIONAL:
            if following is not None and following in spec.choices:
                value = following
                index += 1
            else:
                value = spec.bare_value
        elif following is not None and not _looks_like_flag(following):
            value = following
            index += 1
        elif spec is not None:
            raise FlagError(f"{spelling} expects a value")
        else:
            value = None  # an unknown switch: passed through as given
        if spec is not None and value is not None:
            value = dict(spec.value_aliases).get(value, value)
        flags.append(Flag(name, value))
    return tuple(flags)


def canonicalise(flags: Iterable[Flag], table: FlagTable = BUILTIN_TABLE) -> tuple[Flag, ...]:
    """Last value wins for single-valued flags; repeatable ones keep their order.

    The result is sorted by name (a stable sort, so repeated flags stay in the
    order given): the order of distinct flags means nothing to llama-server.
    """
    kept: dict[str, list[Flag]] = {}
    for flag in flags:
        spec = table.lookup(flag.name)
        if spec is not None and spec.repeatable:
            kept.setdefault(flag.name, []).append(flag)
        else:
            kept[flag.name] = [flag]
    return tuple(flag for name in sorted(kept) for flag in kept[name])


def merge_layers(
    layers: Sequence[Sequence[Flag]], table: FlagTable = BUILTIN_TABLE
) -> tuple[tuple[Flag, ...], ...]:
    """Canonicalise each layer and drop from it every flag a later layer sets.

    Layers go from inherited (base_args, a model's defaults) to explicit (an
    agent's or a request's flags): an explicit flag is never dropped, an
    inherited one is dropped when something more explicit sets the same name.
    """
    merged: list[tuple[Flag, ...]] = []
    overridden: set[str] = set()
    for layer in reversed(layers):
        canonical = canonicalise(layer, table)
        merged.append(tuple(flag for flag in canonical if flag.name not in overridden))
        overridden.update(flag.name for flag in canonical)
    return tuple(reversed(merged))


def render(flags: Iterable[Flag]) -> list[str]:
    """Flags back to argv tokens."""
    argv: list[str] = []
    for flag in flags:
        argv.append(flag.name)
        if flag.value is not None:
            argv.append(flag.value)
    return argv


def effective(layers: Sequence[Sequence[Flag]], table: FlagTable = BUILTIN_TABLE) -> tuple[Flag, ...]:
    """The one canonical flag set that merged layers amount to."""
    return canonicalise((flag for layer in merge_layers(layers, table) for flag in layer), table)


def sidecar_key(model_identity: str, canonical_flags: Iterable[Flag]) -> str:
    """A stable hash of (model file identity, canonical flags): equal inputs share a child.

    ``canonical_flags`` must already be canonical (see ``effective``): the order
    of repeated flags is meaningful and kept.
    """
    payload = json.dumps(
        [model_identity, [[flag.name, flag.value] for flag in canonical_flags]],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
