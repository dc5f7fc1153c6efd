"""Where llama-sidecar keeps its files, decided in one place.

- the cache (learned ``--help`` tables and device lists): ``$LLAMA_SIDECAR_CACHE_DIR``, else
  systemd's ``CacheDirectory=``, else ``$XDG_CACHE_HOME/llama-sidecar`` (``~/.cache/llama-sidecar``);
- the state (children records, learned footprints): ``$LLAMA_SIDECAR_STATE_DIR``, else systemd's
  ``StateDirectory=``, else ``$XDG_STATE_HOME/llama-sidecar`` (``~/.local/state/llama-sidecar``);
- per-user data (a llama-server built for this CPU, when the Python environment is not writable):
  ``$LLAMA_SIDECAR_DATA_DIR``, else ``$XDG_DATA_HOME/llama-sidecar`` (``~/.local/share/llama-sidecar``);
- built llama-servers, minutes of work each, kept per user and CPU whatever the service's cache:
  ``$LLAMA_SIDECAR_BUILD_CACHE_DIR``, else the user's XDG cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "LLAMA_SIDECAR_CACHE_DIR"
STATE_DIR_ENV = "LLAMA_SIDECAR_STATE_DIR"
DATA_DIR_ENV = "LLAMA_SIDECAR_DATA_DIR"
BUILD_CACHE_DIR_ENV = "LLAMA_SIDECAR_BUILD_CACHE_DIR"
_NAME = "llama-sidecar"


def _chosen(override: str, systemd: str | None, xdg: str, *default: str) -> Path:
    configured = os.environ.get(override)
    if configured:
        return Path(configured)
    from_systemd = os.environ.get(systemd, "").split(":")[0] if systemd else ""
    if from_systemd:
        return Path(from_systemd)
    return Path(os.environ.get(xdg) or Path.home().joinpath(*default)) / _NAME


def cache_dir() -> Path:
    return _chosen(CACHE_DIR_ENV, "CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache")


def state_dir() -> Path:
    return _chosen(STATE_DIR_ENV, "STATE_DIRECTORY", "XDG_STATE_HOME", ".local", "state")


def data_dir() -> Path:
    return _chosen(DATA_DIR_ENV, None, "XDG_DATA_HOME", ".local", "share")


def build_cache_dir() -> Path:
    return _chosen(BUILD_CACHE_DIR_ENV, None, "XDG_CACHE_HOME", ".cache")
