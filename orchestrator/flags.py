"""The llama-server flag model: learn it from --help, parse, validate, canonicalise, hash.

Pure logic. A ``FlagTable`` is what one llama-server binary declares: every
spelling of every flag, whether it takes a value, the allowed values where
the help lists them, and which flags were removed (with their replacement).
``parse`` turns user tokens into canonical ``Flag`` values or raises FlagError
listing every problem; canonical means long names instead of aliases, ``--k=v``
split, legacy values mapped (bare ``-fa`` -> ``--flash-attn on``), last value
wins for single-valued flags and a stable order, so equivalent spellings give
the same sidecar key. Flags the supervisor owns are always refused.
"""

from __future__ import annotations

import difflib
import enum
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from orchestrator.errors import FlagError

MAX_TOKENS = 256
MAX_TOTAL_BYTES = 32 * 1024


class Arity(enum.Enum):
    """How a flag takes its value."""

    NONE = "none"  # a switch
    VALUE = "value"  # one value (or ``nargs`` values) must follow
    OPTIONAL = "optional"  # takes the next token only when it is one of ``choices``


@dataclass(frozen=True)
class FlagSpec:
    """What llama-server declares about one flag."""

    name: str  # the canonical spelling
    aliases: tuple[str, ...] = ()
    arity: Arity = Arity.NONE
    placeholder: str = ""  # as printed in --help, e.g. "N", "FNAME", "[on|off|auto]"
    nargs: int = 1
    choices: tuple[str, ...] = ()  # allowed values, when the help lists them
    list_choices: bool = False  # the value is a comma-separated list of choices
    int_range: tuple[int, int] | None = None  # from placeholders like <0...100>
    removed: str | None = None  # the help's note for a flag llama.cpp removed

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def takes_path(self) -> bool:
        """Whether the value names a file or directory on the daemon's machine."""
        return bool(re.search(r"FNAME|FILE|PATH|DIR\b", self.placeholder))


@dataclass(frozen=True, order=True)
class Flag:
    """One canonical flag with its values (none for a switch)."""

    name: str
    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, *values: str) -> Flag:
        return cls(name, values)


class FlagTable:
    """Every known spelling of every flag of one llama-server binary.

    ``authoritative`` tables were read from the binary itself: an unknown flag
    is then an error. The built-in fallback may be older or newer than the
    binary, so with it unknown flags pass through (and are reported as notes).
    """

    def __init__(self, specs: Iterable[FlagSpec], *, authoritative: bool, source: str) -> None:
        self.specs = tuple(specs)
        self.authoritative = authoritative
        self.source = source
        self._by_spelling = {spelling: spec for spec in self.specs for spelling in spec.spellings}

    def lookup(self, spelling: str) -> FlagSpec | None:
        return self._by_spelling.get(spelling)

    def suggest(self, spelling: str) -> str | None:
        current = [s for s in self._by_spelling if not self._by_spelling[s].removed]
        matches = difflib.get_close_matches(spelling, current, n=1, cutoff=0.6)
        return matches[0] if matches else None


# -- reading --help ------------------------------------------------------------------

_SPELLING = r"-{1,2}[A-Za-z0-9][\w.-]*"
_ENTRY = re.compile(rf"^((?:{_SPELLING},\s*)*{_SPELLING})(?: (\S.*?))?(?:\s{{2,}}(.*))?$")
_ENV_NOTE = re.compile(r"\s*\(env: [A-Z0-9_]+\)")
_ALLOWED_VALUES = re.compile(r"allowed values: ([\w.-]+(?:, [\w.-]+)+)")
# Flags whose repeats accumulate instead of replacing each other (the help does not say).
_REPEATABLE = frozenset(
    {"--lora", "--lora-scaled", "--control-vector", "--control-vector-scaled", "--override-kv",
     "--override-tensor", "--spec-draft-override-tensor", "--logit-bias", "--api-key"}
)  # fmt: skip


def parse_help(text: str) -> tuple[FlagSpec, ...]:
    """The flags a llama-server ``--help`` declares."""
    entries: list[tuple[list[str], str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("-") and not line.startswith("-----"):
            match = _ENTRY.match(line.rstrip())
            if match:
                spellings = [s.strip() for s in match.group(1).split(",")]
                entries.append((spellings, match.group(2) or "", [match.group(3) or ""]))
        elif line.startswith(" ") and entries:
            entries[-1][2].append(line.strip())
    return tuple(
        _spec(group, placeholder, _ENV_NOTE.sub("", " ".join(description)).strip())
        for spellings, placeholder, description in entries
        for group in _split_negation(spellings, placeholder)
    )


def _split_negation(spellings: list[str], placeholder: str) -> list[list[str]]:
    """``-kvu, --kv-unified, -no-kvu, --no-kv-unified`` is two switches of opposite meaning.

    The negative spellings follow the positive ones: from the first ``--no-`` one,
    with the short ``-n...`` spellings just before it.
    """
    first = next((i for i, s in enumerate(spellings) if s.startswith("--no-")), None)
    if placeholder or first is None or first == 0:
        return [spellings]
    while first > 1 and not spellings[first - 1].startswith("--") and spellings[first - 1].startswith("-n"):
        first -= 1
    positive, negative = spellings[:first], spellings[first:]
    preferred = "--no-" + next((s for s in positive if s.startswith("--")), positive[0]).lstrip("-")
    if preferred in negative:  # its canonical name mirrors the positive one's (see toggle_slot)
        negative = [preferred, *(s for s in negative if s != preferred)]
    return [positive, negative]


def toggle_slot(name: str) -> str:
    """A switch and its negation share a slot: the later of ``--kv-unified`` / ``--no-kv-unified`` wins."""
    return "--" + name[len("--no-") :] if name.startswith("--no-") else name


def _spec(spellings: list[str], placeholder: str, description: str) -> FlagSpec:
    longs = [s for s in spellings if s.startswith("--")]
    name = longs[0] if longs else spellings[0]
    aliases = tuple(s for s in spellings if s != name)
    removed = description if "has been removed" in description else None
    arity, nargs, list_choices = Arity.NONE, 1, False
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    if placeholder:
        arity = Arity.VALUE
        if bracketed := re.fullmatch(r"\[([\w-]+(?:\|[\w-]+)+)\]", placeholder):
            arity, choices = Arity.OPTIONAL, tuple(bracketed.group(1).split("|"))
        elif braced := re.fullmatch(r"\{([\w-]+(?:,[\w-]+)+)\}", placeholder):
            choices = tuple(braced.group(1).split(","))
        elif piped := re.fullmatch(r"<([\w-]+(?:\|[\w-]+)+)>", placeholder):
            choices = tuple(piped.group(1).split("|"))
        elif ranged := re.fullmatch(r"<(-?\d+)\.\.\.(-?\d+)>", placeholder):
            int_range = (int(ranged.group(1)), int(ranged.group(2)))
        elif re.fullmatch(r"[a-z][\w-]*(?:,[a-z][\w-]*)+", placeholder):
            choices, list_choices = tuple(placeholder.split(",")), True
        elif re.fullmatch(r"[A-Z_]+(?: [A-Z_]+)+", placeholder):
            nargs = len(placeholder.split())
        if not choices and (allowed := _ALLOWED_VALUES.search(description)):
            choices = tuple(allowed.group(1).split(", "))
    return FlagSpec(name, aliases, arity, placeholder, nargs, choices, list_choices, int_range, removed)


@functools.cache
def builtin_table() -> FlagTable:
    """The table of a recent llama-server, shipped with us: the fallback when --help cannot be read."""
    text = resources.files("orchestrator").joinpath("data/llama-server-help.txt").read_text("utf-8")
    return FlagTable(parse_help(text), authoritative=False, source="built-in table (llama.cpp 2026-11)")


# -- ownership and typed checks ---------------------------------------------------------

# The flags the supervisor decides; a user may never set them (by any spelling).
OWNED_FLAGS = frozenset(
    {
        "--host", "--port", "--model", "--model-url", "--docker-repo", "--hf-repo", "--hf-file",
        "--hf-token", "--hf-repo-draft", "--spec-draft-hf", "--hf-repo-v", "--hf-file-v", "--alias",
        "--api-key", "--api-key-file", "--ssl-key-file", "--ssl-cert-file", "--path", "--api-prefix",
        "--reuse-port", "--log-file", "--log-disable", "--help", "--usage", "--version",
        "--list-devices", "--cache-list", "--completion-bash", "--metrics", "--slot-save-path",
    }
)  # fmt: skip
OWNED_PREFIXES = ("--models-", "--no-models-", "--ssl-", "--api-key", "--hf-")
# Flags that fix where a child runs on a box's GPUs: the configuration's to set, else the
# pool's to choose (see placement).
PLACEMENT_FLAGS = ("--device", "--main-gpu", "--tensor-split", "--split-mode")
# Besides file paths, what a request may not switch on for itself: network peers,
# server-side tools, endpoints that change the child's global state, and its GPUs.
REQUEST_FORBIDDEN = frozenset(
    {"--rpc", "--tools", "--tools-runtime", "--mcp-servers-config", "--mcp-servers-json", "--props",
     *PLACEMENT_FLAGS}
)  # fmt: skip


@dataclass(frozen=True)
class NumberRule:
    integer: bool
    minimum: float | None = None
    maximum: float | None = None
    words: tuple[str, ...] = ()  # non-numeric values the flag also accepts

    def problem(self, value: str) -> str | None:
        if value in self.words:
            return None
        try:
            number = int(value) if self.integer else float(value)
        except ValueError:
            kind = "an integer" if self.integer else "a number"
            extra = f" or one of {', '.join(self.words)}" if self.words else ""
            return f"expected {kind}{extra}, got {value!r}"
        if self.minimum is not None and number < self.minimum:
            return f"expected a value >= {self.minimum:g}, got {value}"
        if self.maximum is not None and number > self.maximum:
            return f"expected a value <= {self.maximum:g}, got {value}"
        return None


# Keyed by any spelling; resolved through the table to the binary's canonical name.
NUMBER_RULES: dict[str, NumberRule] = {
    "--ctx-size": NumberRule(True, 0),
    "--n-gpu-layers": NumberRule(True, -1, words=("auto", "all")),
    "--parallel": NumberRule(True, 1),
    "--threads": NumberRule(True, -1),
    "--threads-batch": NumberRule(True, -1),
    "--threads-http": NumberRule(True, -1),
    "--batch-size": NumberRule(True, 1),
    "--ubatch-size": NumberRule(True, 1),
    "--n-predict": NumberRule(True, -1),
    "--keep": NumberRule(True, -1),
    "--seed": NumberRule(True),
    "--top-k": NumberRule(True, 0),
    "--temp": NumberRule(False, 0),
    "--top-p": NumberRule(False, 0, 1),
    "--min-p": NumberRule(False, 0, 1),
    "--spec-draft-n-max": NumberRule(True, 0),
    "--spec-draft-n-min": NumberRule(True, 0),
    "--n-cpu-moe": NumberRule(True, 0),
    "--main-gpu": NumberRule(True, 0),
    "--cache-reuse": NumberRule(True, 0),
    "--timeout": NumberRule(True, 0),
    "--reasoning-budget": NumberRule(True, -1),
    "--rope-freq-base": NumberRule(False, 0),
    "--rope-freq-scale": NumberRule(False, 0),
}
# Legacy spellings of on/off values (llama.cpp's flash-attn took 1/0/-1).
_VALUE_ALIASES = {"1": "on", "0": "off", "-1": "auto", "true": "on", "false": "off"}


def is_owned(name: str) -> bool:
    """Whether a canonical flag name belongs to the supervisor."""
    return name in OWNED_FLAGS or name.startswith(OWNED_PREFIXES)


# -- parsing ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NUMBER.match(token)


def _spelling(token: str) -> str:
    # llama.cpp's long names use dashes; users often write underscores.
    return token.replace("_", "-") if token.startswith("--") else token


class _Parser:
    """One pass over the tokens, collecting every problem."""

    def __init__(self, tokens: Sequence[str], table: FlagTable, per_request: bool) -> None:
        self.tokens = tokens
        self.table = table
        self.per_request = per_request
        self.index = 0
        self.flags: list[Flag] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.rules = {
            spec.name: rule
            for spelling, rule in NUMBER_RULES.items()
            if (spec := table.lookup(spelling)) is not None
        }

    def run(self) -> None:
        total = sum(len(token.encode()) for token in self.tokens)
        if len(self.tokens) > MAX_TOKENS or total > MAX_TOTAL_BYTES:
            self.problems.append(
                f"too many flags: {len(self.tokens)} tokens, {total} bytes "
                f"(at most {MAX_TOKENS} tokens and {MAX_TOTAL_BYTES // 1024} KiB)"
            )
            return
        for token in self.tokens:
            if _CONTROL.search(token):
                self.problems.append(f"{token!r} contains a control character")
        if self.problems:
            return
        while self.index < len(self.tokens):
            self.flag(self.tokens[self.index])

    def take(self) -> str | None:
        if self.index < len(self.tokens):
            self.index += 1
            return self.tokens[self.index - 1]
        return None

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def flag(self, token: str) -> None:
        self.index += 1
        if not _looks_like_flag(token):
            self.problems.append(
                f"{token!r} is a value with no flag before it; expected flags such as '--ctx-size 4096'"
            )
            return
        spelling, has_inline, inline = token.partition("=")
        spec = self.table.lookup(_spelling(spelling))
        name = spec.name if spec else _spelling(spelling)
        if is_owned(name):
            self.problems.append(
                f"{spelling} is set by the supervisor (host, port, model, aliases, API keys, TLS, logging, "
                "metrics and print-and-exit flags are owned); remove it"
            )
            self.skip_values(spec)
            return
        if spec is None:
            self.unknown(spelling, has_inline=bool(has_inline), inline=inline)
            return
        if spec.removed:
            self.problems.append(f"{spelling} was removed from llama.cpp: {spec.removed}")
            self.skip_values(spec)
            return
        if self.per_request and (spec.takes_path or spec.name in REQUEST_FORBIDDEN):
            why = "names a file on the server" if spec.takes_path else "is not allowed per request"
            self.problems.append(f"{spelling} {why}; set it in the configuration instead")
            self.skip_values(spec)
            return
        values = self.values(spec, spelling, inline if has_inline else None)
        if values is not None:
            self.flags.append(Flag(spec.name, values))

    def skip_values(self, spec: FlagSpec | None) -> None:
        if spec is not None and spec.arity is Arity.VALUE:
            for _ in range(spec.nargs):
                if (following := self.peek()) is not None and not _looks_like_flag(following):
                    self.index += 1

    def unknown(self, spelling: str, *, has_inline: bool, inline: str) -> None:
        if self.table.authoritative:
            suggestion = self.table.suggest(_spelling(spelling))
            hint = f"; did you mean {suggestion}?" if suggestion else ""
            self.problems.append(f"{spelling} is not a flag of this llama-server{hint}")
            if not has_inline and (following := self.peek()) is not None and not _looks_like_flag(following):
                self.index += 1  # most likely its value: one problem is enough
            return
        self.notes.append(f"{spelling} is not in the {self.table.source}; passed through unchecked")
        following = self.peek()
        if has_inline:
            self.flags.append(Flag(_spelling(spelling), (inline,)))
        elif following is not None and not _looks_like_flag(following):
            self.index += 1
            self.flags.append(Flag(_spelling(spelling), (following,)))
        else:
            self.flags.append(Flag(_spelling(spelling)))

    def values(self, spec: FlagSpec, spelling: str, inline: str | None) -> tuple[str, ...] | None:
        if spec.arity is Arity.NONE:
            if inline is not None:
                self.problems.append(f"{spelling} is a switch and takes no value, got {inline!r}")
                return None
            return ()
        if spec.arity is Arity.OPTIONAL:
            candidate = inline if inline is not None else self.peek()
            if candidate is None or (inline is None and _looks_like_flag(candidate)):
                return (spec.choices[0],)  # given bare: the first choice (for [on|off|auto]: on)
            if inline is None:
                self.index += 1
            value = _VALUE_ALIASES.get(candidate, candidate)
            if value not in spec.choices:
                self.problems.append(f"{spelling}: {candidate!r} is not one of {', '.join(spec.choices)}")
                return None
            return (value,)
        values: list[str] = [] if inline is None else [inline]
        while len(values) < spec.nargs:
            following = self.peek()
            if following is None or _looks_like_flag(following):
                expected = f"{spec.nargs} values" if spec.nargs > 1 else "a value"
                self.problems.append(f"{spelling} expects {expected} ({spec.placeholder})")
                return None
            values.append(following)
            self.index += 1
        for value in values:
            if problem := self.value_problem(spec, value):
                self.problems.append(f"{spelling}: {problem}")
                return None
        return tuple(values)

    def value_problem(self, spec: FlagSpec, value: str) -> str | None:
        if spec.choices:
            items = value.split(",") if spec.list_choices else [value]
            bad = [item for item in items if item not in spec.choices]
            if bad:
                return f"{', '.join(map(repr, bad))} is not one of {', '.join(spec.choices)}"
        if spec.int_range is not None:
            return NumberRule(True, *spec.int_range).problem(value)
        rule = self.rules.get(spec.name)
        return rule.problem(value) if rule else None


@dataclass(frozen=True)
class ParsedFlags:
    flags: tuple[Flag, ...]
    notes: tuple[str, ...]  # things worth a log line that are not errors


def parse_with_notes(tokens: Sequence[str], table: FlagTable, *, per_request: bool = False) -> ParsedFlags:
    """Parse user tokens into flags; FlagError lists every problem.

    ``per_request`` adds the rules for flags that arrive with a request: no
    flag that names a file on the server, and none of REQUEST_FORBIDDEN.
    """
    parser = _Parser(tokens, table, per_request)
    parser.run()
    if parser.problems:
        raise FlagError(parser.problems)
    return ParsedFlags(tuple(parser.flags), tuple(parser.notes))


def parse(
    tokens: Sequence[str], table: FlagTable | None = None, *, per_request: bool = False
) -> tuple[Flag, ...]:
    return parse_with_notes(tokens, table or builtin_table(), per_request=per_request).flags


# -- canonical form, layers, argv, key --------------------------------------------------------


def canonicalise(flags: Iterable[Flag]) -> tuple[Flag, ...]:
    """Last value wins for single-valued flags; repeatable ones keep their order.

    Sorted by name (a stable sort, so repeated flags stay in the order given):
    the order of distinct flags means nothing to llama-server.
    """
    kept: dict[str, list[Flag]] = {}
    for flag in flags:
        if flag.name in _REPEATABLE:
            kept.setdefault(flag.name, []).append(flag)
        else:
            kept[toggle_slot(flag.name)] = [flag]
    return tuple(flag for slot in sorted(kept) for flag in kept[slot])


def merge_layers(layers: Sequence[Sequence[Flag]]) -> tuple[tuple[Flag, ...], ...]:
    """Canonicalise each layer and drop from it every flag a later layer sets.

    Layers go from inherited (base_args, a model's defaults) to explicit (an
    agent's or a request's flags): an explicit flag is never dropped, an
    inherited one is dropped when something more explicit sets the same name.
    """
    merged: list[tuple[Flag, ...]] = []
    overridden: set[str] = set()
    for layer in reversed(layers):
        canonical = canonicalise(layer)
        merged.append(tuple(flag for flag in canonical if toggle_slot(flag.name) not in overridden))
        overridden.update(toggle_slot(flag.name) for flag in canonical)
    return tuple(reversed(merged))


def effective(layers: Sequence[Sequence[Flag]]) -> tuple[Flag, ...]:
    """The one canonical flag set that merged layers amount to."""
    return canonicalise(flag for layer in merge_layers(layers) for flag in layer)


def render(flags: Iterable[Flag]) -> list[str]:
    """Flags back to argv tokens."""
    return [token for flag in flags for token in (flag.name, *flag.values)]


def sidecar_key(identity: str, canonical_flags: Iterable[Flag]) -> str:
    """A stable hash of (model and binary identity, canonical flags): equal inputs share a child.

    ``canonical_flags`` must already be canonical (see ``effective``): the order
    of repeated flags is meaningful and kept.
    """
    payload = json.dumps(
        [identity, [[flag.name, *flag.values] for flag in canonical_flags]], separators=(",", ":")
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
