"""Routing: the name in a request's ``model`` field -> the sidecar that serves it.

Pure logic. Every agent, model and alias resolves to a ``Route``: the model,
its binary, its flag layers and whether requests may add flags. A route plus
(optional) per-request flags gives a ``SidecarSpec``: everything needed to
start one child, and its stable key. Names whose effective (binary, model,
flags) are identical get the same key and so share one child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import flags as flagmod
from orchestrator.config import Config, ModelConfig, file_identity
from orchestrator.errors import FlagError, UnknownModelError
from orchestrator.flags import Flag, FlagTable

CHILD_HOST = "127.0.0.1"


@dataclass(frozen=True)
class LlamaServerBinary:
    """A llama-server to run (found by discovery) and what its children's environment needs."""

    path: str
    origin: str  # config, build, wheel or PATH
    env: Mapping[str, str] = field(default_factory=dict)  # added to the child's environment

    @property
    def identity(self) -> str:
        """Changes when the binary is replaced, so its children get new keys."""
        try:
            return file_identity(Path(self.path))
        except OSError:
            return self.path  # vanished since it was found: spawning will say so


@dataclass(frozen=True)
class SidecarSpec:
    """Everything needed to start one llama-server child, and its identity."""

    key: str
    model: str
    model_path: str
    binary: LlamaServerBinary
    inherited: tuple[Flag, ...]  # from base_args, minus whatever the model or agent sets
    explicit: tuple[Flag, ...]  # the model's, the agent's and the request's own flags
    idle_ttl_s: float

    def argv(self, port: int) -> list[str]:
        # Explicit flags go last: llama.cpp's last-wins parsing lets them win anyway.
        return [
            self.binary.path,
            *flagmod.render(self.inherited),
            "--model", self.model_path,
            "--host", CHILD_HOST,
            "--port", str(port),
            *flagmod.render(self.explicit),
        ]  # fmt: skip


@dataclass(frozen=True)
class Route:
    """One name a client may put in ``model``."""

    name: str
    kind: str  # "agent", "model" or "alias"
    model: ModelConfig
    layers: tuple[tuple[Flag, ...], ...]  # base_args, model flags, agent flags
    binary: LlamaServerBinary
    idle_ttl_s: float
    allow_request_flags: bool
    # The model's and the binary's identity, taken when the config was loaded: a replaced
    # file gets a new key on the next reload (and no file is read per request).
    identity: str

    def spec(self, request_flags: Sequence[Flag] = ()) -> SidecarSpec:
        """The child for this route, with ``request_flags`` as the most explicit layer."""
        merged = flagmod.merge_layers((*self.layers, tuple(request_flags)))
        inherited = merged[0]
        explicit = flagmod.canonicalise(flag for layer in merged[1:] for flag in layer)
        key = flagmod.sidecar_key(self.identity, flagmod.canonicalise((*inherited, *explicit)))
        return SidecarSpec(
            key, self.model.name, self.model.path, self.binary, inherited, explicit, self.idle_ttl_s
        )


class RouteTable:
    """Every routable name of one configuration, resolved once."""

    def __init__(
        self,
        config: Config,
        binaries: Mapping[str | None, LlamaServerBinary],
        flag_tables: Mapping[str | None, FlagTable] | None = None,
    ) -> None:
        self.config = config
        self._flag_tables = flag_tables or {}
        base = config.llama_server.base_args
        ttl = config.pool.idle_ttl_s
        routes: dict[str, Route] = {}
        for model in config.models.values():
            binary = binaries[config.bin_for(model)]
            model_ttl = ttl if model.ttl_s is None else model.ttl_s
            identity = f"{model.identity}|{binary.identity}"
            layers = (base, model.flags)
            allow = model.allow_request_flags
            route = Route(model.name, "model", model, layers, binary, model_ttl, allow, identity)
            routes[model.name] = route
            for alias in model.aliases:
                routes[alias] = Route(alias, "alias", model, layers, binary, model_ttl, allow, identity)
        for agent in config.agents.values():
            parent = routes[agent.model]
            routes[agent.name] = Route(
                agent.name,
                "agent",
                parent.model,
                (*parent.layers, agent.flags),
                parent.binary,
                parent.idle_ttl_s,
                agent.allow_request_flags,
                parent.identity,
            )
        self._routes: Mapping[str, Route] = routes
        self._specs = {name: route.spec() for name, route in routes.items()}  # the per-request fast path

    def route(self, name: str) -> Route:
        found = self._routes.get(name)
        if found is None:
            raise UnknownModelError(name, sorted(self._routes))
        return found

    def resolve(self, name: str, request_tokens: Sequence[str] = ()) -> SidecarSpec:
        """The spec for a request naming ``name``, with its per-request flags if it has any."""
        route = self.route(name)
        if not request_tokens:
            return self._specs[name]
        if not route.allow_request_flags:
            refusal = f"{route.kind} {name!r} does not accept per-request flags"
            raise FlagError([f"{refusal} (its config would need allow_request_flags = true)"])
        table = self._flag_tables.get(self.config.bin_for(route.model)) or flagmod.builtin_table()
        return route.spec(flagmod.parse(request_tokens, table, per_request=True))

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def key_of(self, name: str) -> str:
        return self._specs[name].key

    def users(self, key: str) -> list[str]:
        """The agents and models (not aliases) whose requests land on ``key`` without extra flags."""
        return [r.name for r in self._routes.values() if self._specs[r.name].key == key and r.kind != "alias"]
