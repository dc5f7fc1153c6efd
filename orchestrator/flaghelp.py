"""Asking a llama-server binary about itself (``--help``, ``--list-devices``), cached per binary.

The cache holds the text it printed (not the parse), keyed by the binary's
real path, size and modification time, in the cache directory (``dirs.cache_dir``). When the help
cannot be read, the built-in flag table is used and the log says so.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator.dirs import cache_dir
from orchestrator.errors import HelpUnreadableError
from orchestrator.flags import FlagTable, builtin_table, parse_help
from orchestrator.procgroup import child_environment
from orchestrator.routing import LlamaServerBinary

log = logging.getLogger("orchestrator.flags")

HELP_TIMEOUT_S = 30.0
_MIN_FLAGS = 50  # fewer than this and the output was not llama-server's help


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
    def looks_like_help(text: str) -> bool:
        return len(parse_help(text)) >= _MIN_FLAGS

    text = ask_binary(path, identity, dict(env), "--help", accept=looks_like_help)
    if text is None:
        raise HelpUnreadableError("its --help could not be run or listed too few flags")
    return FlagTable(parse_help(text), authoritative=True, source=f"{path} --help")


def ask_binary(
    path: str,
    identity: str,
    env: Mapping[str, str],
    argument: str,
    *,
    accept: Callable[[str], bool],
    also_keyed_by: str = "",
) -> str | None:
    """What ``path ARGUMENT`` prints (stdout and stderr), cached on disk per binary identity.

    ``accept`` says whether an answer is good (only good ones are cached);
    ``also_keyed_by`` adds to the cache key (e.g. the boot, for what can change
    without the binary changing). None when it cannot be run or gives no good answer.
    """
    digest = hashlib.sha256(f"{identity}|{also_keyed_by}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{argument.lstrip('-')}-{digest}.txt"
    try:
        return cached.read_text("utf-8")
    except OSError:
        pass  # not asked yet
    try:
        result = subprocess.run(
            [path, argument],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=child_environment(os.environ, env),
            timeout=HELP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.info("running %s %s failed: %s", path, argument, error)
        return None
    text = (result.stdout + result.stderr).decode("utf-8", "replace")
    if not accept(text):
        return None
    _store(cached, text)
    return text


def _store(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, "utf-8")
        partial.replace(path)
    except OSError as error:
        log.info("not caching llama-server flags at %s: %s", path, error)  # works, only slower
