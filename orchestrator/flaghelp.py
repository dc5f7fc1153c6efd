"""Learning a llama-server binary's flags from its own ``--help``, cached per binary.

The cache holds the help text (not the parse), keyed by the binary's real
path, size and modification time, under ``$LLAMA_SIDECAR_CACHE_DIR`` or
``~/.cache/llama-sidecar``. When the help cannot be read, the built-in table
is used and the log says so.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
from pathlib import Path

from orchestrator.errors import HelpUnreadableError
from orchestrator.flags import FlagTable, builtin_table, parse_help
from orchestrator.procgroup import child_environment
from orchestrator.routing import LlamaServerBinary

log = logging.getLogger("orchestrator.flags")

CACHE_DIR_ENV = "LLAMA_SIDECAR_CACHE_DIR"
HELP_TIMEOUT_S = 30.0
_MIN_FLAGS = 50  # fewer than this and the output was not llama-server's help


def cache_dir() -> Path:
    """``$LLAMA_SIDECAR_CACHE_DIR``, else systemd's ``CacheDirectory=``, else the XDG cache."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    from_systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if from_systemd:
        return Path(from_systemd)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama-sidecar"


def load_flag_table(binary: LlamaServerBinary) -> FlagTable:
    """The flags ``binary`` declares, or the built-in table (with a warning) if that fails."""
    try:
        return _learned_table(binary.path, binary.identity, tuple(sorted(binary.env.items())))
    except HelpUnreadableError as error:
        fallback = builtin_table()
        log.warning("cannot read the flags of %s (%s); using the %s", binary.path, error, fallback.source)
        return fallback


@functools.cache
def _learned_table(path: str, identity: str, env: tuple[tuple[str, str], ...]) -> FlagTable:
    cached = cache_dir() / f"help-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.txt"
    try:
        text = cached.read_text("utf-8")
    except OSError:
        text = _run_help(path, dict(env))
        _store(cached, text)
    specs = parse_help(text)
    if len(specs) < _MIN_FLAGS:
        raise HelpUnreadableError(f"its --help lists only {len(specs)} flags")
    return FlagTable(specs, authoritative=True, source=f"{path} --help")


def _run_help(path: str, env: dict[str, str]) -> str:
    try:
        result = subprocess.run(
            [path, "--help"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=child_environment(os.environ, env),
            timeout=HELP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise HelpUnreadableError(f"running --help failed: {error}") from error
    text = result.stdout.decode("utf-8", "replace")
    if len(parse_help(text)) < _MIN_FLAGS:
        raise HelpUnreadableError(f"--help exited with {result.returncode} and listed too few flags")
    return text


def _store(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, "utf-8")
        partial.replace(path)
    except OSError as error:
        log.info("not caching llama-server flags at %s: %s", path, error)  # works, only slower
