"""Importing a llama-swap ``config.yaml``: each model's ``cmd`` becomes a model entry.

Pure logic (given the YAML text and the environment). Macros are expanded as
llama-swap does (``${env.X}`` first, then global and per-model macros in
order, ``${MODEL_ID}``); ``#`` comment lines are dropped from multi-line
commands; the binary, the model path, the flags (minus the ones the
supervisor owns), aliases and TTL are mapped. Whatever has no equivalent here
(groups, matrix, hooks, peers, filters, cmdStop, proxy, ...) is reported as a
warning naming the model and the key, never dropped silently. llama-swap runs
one model at a time unless groups say otherwise, so the import keeps that:
``pool.max_sidecars = 1``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import yaml

from orchestrator import flags as flagmod
from orchestrator.errors import ConfigError
from orchestrator.flags import Arity

_MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
_MODEL_KEYS_MAPPED = {"cmd", "aliases", "ttl", "macros"}
_TOP_KEYS_MAPPED = {"models", "macros", "healthCheckTimeout", "globalTTL"}
_TOP_KEYS_HARMLESS = {
    "logLevel",
    "logTimeFormat",
    "logToStdout",
    "metricsMaxInMemory",
    "captureBuffer",
    "startPort",
}
_MODEL_KEYS_HARMLESS = {"name", "description", "metadata", "unlisted"}
# Owned flags a llama-swap cmd always has; dropping them needs no warning.
_EXPECTED_OWNED = {"--port", "--model"}


@dataclass
class Conversion:
    document: dict[str, Any]  # our configuration structure
    warnings: list[str] = field(default_factory=list)


def looks_like_llama_swap(document: Mapping[str, Any]) -> bool:
    models = document.get("models")
    return isinstance(models, Mapping) and any(isinstance(m, Mapping) and "cmd" in m for m in models.values())


def load_yaml(text: str, source: str) -> Mapping[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{source}: not valid YAML: {error}"]) from error
    if not isinstance(document, Mapping):
        raise ConfigError([f"{source}: expected a mapping at the top level"])
    return document


def convert(
    document: Mapping[str, Any], source: str, environ: Mapping[str, str], ctx_size: int | None = None
) -> Conversion:
    """Our configuration for a llama-swap document; ConfigError for what cannot be read at all."""
    if not looks_like_llama_swap(document):
        raise ConfigError([f"{source}: not a llama-swap config (expected models: with a cmd: each)"])
    result = Conversion({"llama_server": {}, "pool": {"max_sidecars": 1}, "models": {}})
    for key in sorted(set(document) - _TOP_KEYS_MAPPED - _TOP_KEYS_HARMLESS):
        result.warnings.append(f"{source}: {key}: not mapped (llama-sidecar has no equivalent); left out")
    if isinstance(timeout := document.get("healthCheckTimeout"), int | float):
        result.document["llama_server"]["health_timeout_s"] = max(15, timeout)  # llama-swap's minimum
    global_ttl = document.get("globalTTL", 0)
    if isinstance(global_ttl, int | float) and global_ttl > 0:
        result.document["pool"]["idle_ttl_s"] = global_ttl
    importer = _ModelImporter(source, document.get("macros") or {}, environ, ctx_size, result.warnings)
    binaries: set[str] = set()
    for model_id, model in document["models"].items():
        entry = importer.convert(str(model_id), model)
        if entry is not None:
            result.document["models"][str(model_id)] = entry
            binaries.add(entry["bin"])
    if len(binaries) == 1:  # one binary for all: say it once
        result.document["llama_server"]["bin"] = binaries.pop()
        for entry in result.document["models"].values():
            del entry["bin"]
    return result


@dataclass
class _ModelImporter:
    source: str
    global_macros: Mapping[str, Any]
    environ: Mapping[str, str]
    ctx_size: int | None
    warnings: list[str]

    def convert(self, model_id: str, model: Any) -> dict[str, Any] | None:
        """One model entry, or None (with a warning) when the model cannot be mapped."""
        where = f"{self.source}: models.{model_id}"
        if not isinstance(model, Mapping) or not isinstance(model.get("cmd"), str):
            self.warnings.append(f"{where}: has no cmd string; left out")
            return None
        for key in sorted(set(model) - _MODEL_KEYS_MAPPED - _MODEL_KEYS_HARMLESS):
            self.warnings.append(f"{where}.{key}: not mapped (llama-sidecar has no equivalent); left out")
        macros = _macros(self.global_macros, model.get("macros") or {}, model_id, where)
        command = "\n".join(line for line in model["cmd"].splitlines() if not line.strip().startswith("#"))
        try:
            tokens = shlex.split(_expand(command, macros, self.environ, where))
        except ValueError as error:
            raise ConfigError([f"{where}.cmd: cannot split the command: {error}"]) from error
        if not tokens or "llama-server" not in PurePath(tokens[0]).name:
            runs = tokens[0] if tokens else "nothing"
            self.warnings.append(f"{where}.cmd: runs {runs!r}, not llama-server; left out")
            return None
        flags, model_path = _split_flags(tokens[1:], where, self.warnings)
        if model_path is None:
            self.warnings.append(
                f"{where}.cmd: no local model file (-m/--model); downloads are not supported; left out"
            )
            return None
        if self.ctx_size is not None:
            flags = [*_without(flags, "--ctx-size"), "--ctx-size", str(self.ctx_size)]
        entry: dict[str, Any] = {"path": model_path, "flags": flags, "bin": tokens[0]}
        aliases = [a if isinstance(a, str) else a.get("id") for a in model.get("aliases") or []]
        if aliases:
            entry["aliases"] = [str(a) for a in aliases if a]
        ttl = model.get("ttl", -1)
        if isinstance(ttl, int | float) and ttl >= 0:
            entry["ttl_s"] = ttl
        return entry


def _macros(
    global_macros: Mapping[str, Any], model_macros: Mapping[str, Any], model_id: str, where: str
) -> dict[str, str]:
    """Global macros, overridden by the model's, plus MODEL_ID; expanded lazily, as llama-swap does
    (so a model's macro also changes a global macro that uses it)."""
    merged: dict[str, str] = {"MODEL_ID": model_id}
    for name, value in [*global_macros.items(), *model_macros.items()]:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if f"${{{name}}}" in text:
            raise ConfigError([f"{where}: macro {name!r} contains itself (self-reference)"])
        merged[str(name)] = text
    return merged


_MAX_EXPANSIONS = 32


def _expand(text: str, macros: Mapping[str, str], environ: Mapping[str, str], where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("env."):
            if name[4:] not in environ:
                raise ConfigError([f"{where}: environment variable {name[4:]} is not set"])
            return environ[name[4:]]
        if name in ("PORT", "PID"):
            return match.group(0)  # the supervisor's to fill; the flag is dropped below
        if name not in macros:
            raise ConfigError([f"{where}: unknown macro ${{{name}}}"])
        return macros[name]

    for _ in range(_MAX_EXPANSIONS):  # macros may contain macros
        expanded = _MACRO.sub(substitute, text)
        if expanded == text:
            return text
        text = expanded
    raise ConfigError([f"{where}: macros keep expanding (a cycle between macros?)"])


def _split_flags(tokens: list[str], where: str, warnings: list[str]) -> tuple[list[str], str | None]:
    """The user flags of a llama-server command line, and its model path."""
    table = flagmod.builtin_table()
    kept: list[str] = []
    model_path: str | None = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        spelling, has_inline, inline = token.partition("=")
        spec = table.lookup(spelling.replace("_", "-") if spelling.startswith("--") else spelling)
        takes_value = spec is not None and spec.arity is Arity.VALUE and not has_inline
        value = (
            inline if has_inline else tokens[index + 1] if takes_value and index + 1 < len(tokens) else None
        )
        width = 2 if takes_value else 1
        name = spec.name if spec else spelling
        if flagmod.is_owned(name):
            if name == "--model":
                model_path = value
            elif name not in _EXPECTED_OWNED:
                warnings.append(f"{where}.cmd: {spelling} is set by llama-sidecar; dropped")
        else:
            kept.extend(tokens[index : index + width])
        index += width
    return kept, model_path


def _without(tokens: list[str], flag_name: str) -> list[str]:
    table = flagmod.builtin_table()
    kept: list[str] = []
    skip = 0
    for token in tokens:
        if skip:
            skip -= 1
            continue
        spec = table.lookup(token.partition("=")[0])
        if spec is not None and spec.name == flag_name:
            skip = 0 if "=" in token else spec.nargs
            continue
        kept.append(token)
    return kept


def to_toml(document: Mapping[str, Any]) -> str:
    """Render our configuration structure (tables of scalars and string lists) as TOML."""
    lines: list[str] = []

    def table(header: str, values: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
        if scalars:
            lines.append(f"[{header}]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
            lines.append("")
        for key, value in values.items():
            if isinstance(value, Mapping):
                table(f"{header}.{_key(key)}", value)

    for section, values in document.items():
        table(_key(section), values)
    return "\n".join(lines)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string: its escapes are JSON's
