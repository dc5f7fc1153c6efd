"""Routing: the name in a request's ``model`` field -> the sidecar that serves it.

Pure logic. Every agent, model and alias resolves to a ``SidecarSpec``: the
model file, the merged flag layers and the stable key. Names whose effective
(model, flags) are identical get the same key and so share one child.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator import flags as flagmod
from orchestrator.config import Config, ModelConfig
from orchestrator.errors import UnknownModelError
from orchestrator.flags import Flag

CHILD_HOST = "127.0.0.1"


@dataclass(frozen=True)
class SidecarSpec:
    """Everything needed to start one llama-server child, and its identity."""

    key: str
    model: str
    model_path: str
    inherited: tuple[Flag, ...]  # from base_args, minus whatever the model or agent sets
    explicit: tuple[Flag, ...]  # the model's and the agent's own flags

    def argv(self, binary: str, port: int) -> list[str]:
        # Explicit flags go last: llama.cpp's last-wins parsing lets them win anyway.
        return [
            binary,
            *flagmod.render(self.inherited),
            "--model", self.model_path,
            "--host", CHILD_HOST,
            "--port", str(port),
            *flagmod.render(self.explicit),
        ]  # fmt: skip

    @property
    def flags(self) -> tuple[Flag, ...]:
        return flagmod.canonicalise((*self.inherited, *self.explicit))


def build_spec(config: Config, model: ModelConfig, *explicit_layers: tuple[Flag, ...]) -> SidecarSpec:
    """Merge base_args, the model's flags and any more explicit layers into a spec."""
    layers = (config.llama_server.base_args, model.flags, *explicit_layers)
    merged = flagmod.merge_layers(layers)
    inherited, explicit = merged[0], tuple(flag for layer in merged[1:] for flag in layer)
    key = flagmod.sidecar_key(model.identity, flagmod.canonicalise((*inherited, *explicit)))
    return SidecarSpec(key, model.name, model.path, inherited, flagmod.canonicalise(explicit))


@dataclass(frozen=True)
class RouteEntry:
    """One name a client may put in ``model``."""

    name: str
    kind: str  # "agent", "model" or "alias"
    spec: SidecarSpec


class RouteTable:
    """Every routable name of one configuration, resolved once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        entries: dict[str, RouteEntry] = {}
        for model in config.models.values():
            spec = build_spec(config, model)
            entries[model.name] = RouteEntry(model.name, "model", spec)
            for alias in model.aliases:
                entries[alias] = RouteEntry(alias, "alias", spec)
        for agent in config.agents.values():
            spec = build_spec(config, config.models[agent.model], agent.flags)
            entries[agent.name] = RouteEntry(agent.name, "agent", spec)
        self._entries: Mapping[str, RouteEntry] = entries

    def resolve(self, name: str) -> SidecarSpec:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownModelError(name, sorted(self._entries))
        return entry.spec

    def entries(self) -> list[RouteEntry]:
        return list(self._entries.values())

    def users(self, key: str) -> list[str]:
        """The agents and models (not aliases) whose requests land on ``key``."""
        return [e.name for e in self._entries.values() if e.spec.key == key and e.kind != "alias"]
