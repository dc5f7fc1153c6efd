"""What every CLI command shares: loading the config, running trio, errors worth one short line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from orchestrator.config import Config, load_config
from orchestrator.discovery import demo_config, find_llama_server
from orchestrator.errors import OrchestratorError, only_errors_of
from orchestrator.flaghelp import load_flag_table
from orchestrator.flags import FlagTable

T = TypeVar("T")


def run_trio(async_fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """trio.run, with an OrchestratorError raised inside nurseries unwrapped for a clean message."""
    try:
        return trio.run(async_fn, *args)
    except BaseExceptionGroup as group:
        error = only_errors_of(group, OrchestratorError)
        if error is None:
            raise
        raise error from group


def flag_table_for(setting: str | None) -> FlagTable:
    """The flags of the binary a ``bin`` setting names (None: the default one)."""
    return load_flag_table(find_llama_server(setting))


def load_cli_config(path: str | None) -> Config:
    """A validated config: flags checked against what each model's binary declares."""
    config = load_config(path, flag_table_for) if path else demo_config()
    for note in config.notes:
        print(f"note: {note}", file=sys.stderr)
    return config


def lazy_handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command handler that imports ``module`` when the command runs, not when the parser is built."""

    def handler(args: argparse.Namespace) -> int:
        command: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return command(args)

    return handler
