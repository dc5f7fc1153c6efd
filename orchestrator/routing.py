"""Routing: the name in a request's ``model`` field -> the sidecar that serves it.

Pure logic. Every agent, model and alias resolves to a ``Route``: the model,
its binary, its flag layers and whether requests may add flags. A route plus
(optional) per-request flags gives a ``SidecarSpec``: everything needed to
start one child, and its stable key. Names whose effective (binary, model,
flags) are identical get the same key and so share one child.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import flags as flagmod
from orchestrator.config import Config, ModelConfig, Placement, file_identity
from orchestrator.errors import FlagError, MissingModelError, UnknownModelError
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
    inherited: tuple[Flag, ...]  # supervisor defaults and base_args, minus what the model or agent sets
    explicit: tuple[Flag, ...]  # the model's, the agent's and the request's own flags
    idle_ttl_s: float
    placement: Placement = field(default_factory=Placement)
    extra_argv: tuple[str, ...] = ()  # for this start only, not part of the key (see pool: learning)
    # The names requests reach it by: its --alias, so its answers say a name users know, never the
    # model file's path. Not part of the key (a name added by a reload does not restart it).
    names: tuple[str, ...] = ()
    identity: str = ""  # the model's and binary's (see Route.identity): what its saved KV cache is of
    copy_of: str = ""  # a second (third...) copy of a busy child: the first one's key (see pool)

    @property
    def config_key(self) -> str:
        """The key of what it runs (model, flags, binary): the same for every copy."""
        return self.copy_of or self.key

    def argv(self, port: int) -> list[str]:
        # Explicit flags go last: llama.cpp's last-wins parsing lets them win anyway.
        aliases = [name for name in self.names if "," not in name]  # llama.cpp splits the list on ","
        return [
            self.binary.path,
            *flagmod.render(self.inherited),
            "--model", self.model_path,
            "--host", CHILD_HOST,
            "--port", str(port),
            *(["--alias", ",".join(aliases)] if aliases else []),
            "--metrics",  # its llamacpp:* series, merged into the daemon's /metrics
            *flagmod.render(self.explicit),
            *self.extra_argv,
        ]  # fmt: skip

    @property
    def flags(self) -> tuple[Flag, ...]:
        """Every flag the child runs with, canonical."""
        return flagmod.canonicalise((*self.inherited, *self.explicit))

    def sets(self, name: str) -> bool:
        return any(flag.name == name for flag in self.flags)


@dataclass(frozen=True)
class Route:
    """One name a client may put in ``model``."""

    name: str
    kind: str  # "agent", "model" or "alias"
    model: ModelConfig
    layers: tuple[tuple[Flag, ...], ...]  # supervisor defaults, base_args, model flags, agent flags
    binary: LlamaServerBinary
    idle_ttl_s: float
    allow_request_flags: bool
    # The model's and the binary's identity, taken when the config was loaded: a replaced
    # file gets a new key on the next reload (and no file is read per request).
    identity: str
    placement: Placement = field(default_factory=Placement)
    send_loading_state: bool = False  # a streamed chat waiting for its child's load shows the wait

    def spec(self, request_flags: Sequence[Flag] = ()) -> SidecarSpec:
        """The child for this route, with ``request_flags`` as the most explicit layer."""
        merged = flagmod.merge_layers((*self.layers, tuple(request_flags)))
        inherited = merged[0]
        explicit = flagmod.canonicalise(flag for layer in merged[1:] for flag in layer)
        key = flagmod.sidecar_key(self.identity, flagmod.canonicalise((*inherited, *explicit)))
        return SidecarSpec(
            key,
            self.model.name,
            self.model.path,
            self.binary,
            inherited,
            explicit,
            self.idle_ttl_s,
            self.placement,
            names=(self.name,),
            identity=self.identity,
        )


def supervisor_defaults(config: Config, table: FlagTable | None) -> tuple[Flag, ...]:
    """Flags every child gets unless its own flags set them (where its binary knows them).

    ``--cache-ram``: the prompt cache a child grows into is capped, and counted against the
    host budget. (A child's context size and GPU layers are made explicit when it starts, see
    supervisor.memory, so that llama.cpp's --fit has nothing of its siblings' memory to take.)
    """
    wanted = (Flag.of("--cache-ram", str(config.pool.prompt_cache_mib)),)
    known = table if table is not None and table.authoritative else None
    return tuple(flag for flag in wanted if known is None or known.lookup(flag.name) is not None)


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
        ttl = config.pool.idle_ttl_s
        routes: dict[str, Route] = {}
        for model in config.models.values():
            setting = config.bin_for(model)
            binary = binaries[setting]
            model_ttl = ttl if model.ttl_s is None else model.ttl_s
            identity = f"{model.identity}|{binary.identity}"
            inherited = (
                *supervisor_defaults(config, self._flag_tables.get(setting)),
                *config.llama_server.base_args,
            )
            layers = (inherited, model.flags)
            allow, placement = model.allow_request_flags, model.placement
            loading = (
                config.server.send_loading_state
                if model.send_loading_state is None
                else model.send_loading_state
            )
            for name, kind in ((model.name, "model"), *((alias, "alias") for alias in model.aliases)):
                routes[name] = Route(
                    name, kind, model, layers, binary, model_ttl, allow, identity, placement, loading
                )
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
                agent.placement or parent.placement,
                parent.send_loading_state if agent.send_loading_state is None else agent.send_loading_state,
            )
        self._routes: Mapping[str, Route] = routes
        specs = {name: route.spec() for name, route in routes.items()}
        # Names that share a child share its placement: pinned if any is, the highest priority.
        by_key: dict[str, list[Placement]] = {}
        for name, spec in specs.items():
            by_key.setdefault(spec.key, []).append(routes[name].placement)
        shared = {
            key: Placement(
                pin=any(p.pin for p in placements),
                priority=max(p.priority for p in placements),
                preload=any(p.preload for p in placements),
                replicas_max=max(p.replicas_max for p in placements),
            )
            for key, placements in by_key.items()
        }
        names = {key: tuple(name for name, spec in specs.items() if spec.key == key) for key in by_key}
        # The per-request fast path: one spec per name, resolved once.
        self._specs = {
            name: dataclasses.replace(spec, placement=shared[spec.key], names=names[spec.key])
            for name, spec in specs.items()
        }

    def route(self, name: str) -> Route:
        found = self._routes.get(name)
        if found is None:
            raise UnknownModelError(name, sorted(self._routes))
        return found

    def default(self) -> str | None:
        """Where a request that names no model goes: server.default_model, else the one model when
        there is one and no agent (its aliases are the same child), else nowhere."""
        if self.config.server.default_model is not None:
            return self.config.server.default_model
        if len(self.config.models) == 1 and not self.config.agents:
            return next(iter(self.config.models))
        return None

    def resolve(self, name: str | None, request_tokens: Sequence[str] = ()) -> SidecarSpec:
        """The spec for a request naming ``name`` (None: the default), with its per-request flags."""
        if name is None:
            name = self.default()
            if name is None:
                raise MissingModelError(sorted(self._routes))
        route = self.route(name)
        if not request_tokens:
            return self._specs[name]
        if not route.allow_request_flags:
            refusal = f"{route.kind} {name!r} does not accept per-request flags"
            raise FlagError([f"{refusal} (its config would need allow_request_flags = true)"])
        return route.spec(flagmod.parse(request_tokens, self._table_of(route), per_request=True))

    def _table_of(self, route: Route) -> FlagTable:
        return self._flag_tables.get(self.config.bin_for(route.model)) or flagmod.builtin_table()

    def where_to_enable(self, name: str, tokens: Sequence[str]) -> str | None:
        """Where flags the child of ``name`` lacks would go here, as a sentence (None: the supervisor's
        own, or flags this binary does not take, which no user can add)."""
        route = self.route(name)
        table = self._table_of(route)
        try:
            flagmod.parse(tokens, table)
        except FlagError:
            return None
        model = f"models.{route.model.name}"
        place = f"agents.{name} (or {model}, for every name that runs it)" if route.kind == "agent" else model
        sentence = f"Here: add {json.dumps(' '.join(tokens))} to the flags of {place} in {self.config.source}"
        if route.allow_request_flags:
            try:
                flagmod.parse(tokens, table, per_request=True)
            except FlagError:
                return sentence  # a flag a request may not bring (a file on the server, say)
            sentence += (
                f', or send it per request as "llama_flags": {json.dumps(list(tokens))}, '
                f"which this {route.kind} allows"
            )
        return sentence

    def public_args(self, name: str) -> list[str]:
        """The command line of ``name``'s child as users may see it: the canonical flags, with the
        value of every flag that names a file cut to the file's name (no server path leaves)."""
        table = self._table_of(self.route(name))
        shown = ["llama-server"]
        for flag in self._specs[name].flags:
            spec = table.lookup(flag.name)
            names_a_file = spec is not None and spec.takes_path
            shown += [flag.name, *(Path(value).name if names_a_file else value for value in flag.values)]
        return shown

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def binary_knows(self, binary: LlamaServerBinary, flag: str) -> bool:
        """Whether ``binary`` declares ``flag`` (by its learned table; assumed when it is unknown)."""
        tables = [
            t for s, t in self._flag_tables.items() if self._binary_of(s) == binary.path and t.authoritative
        ]
        return all(table.lookup(flag) is not None for table in tables)

    def _binary_of(self, setting: str | None) -> str | None:
        return next(
            (r.binary.path for r in self._routes.values() if self.config.bin_for(r.model) == setting), None
        )

    def started_at_boot(self) -> list[SidecarSpec]:
        """One spec per child that is pinned or preloaded, to start when the daemon does."""
        chosen: dict[str, SidecarSpec] = {}
        for spec in self._specs.values():
            if spec.placement.pin or spec.placement.preload:
                chosen.setdefault(spec.key, spec)
        return list(chosen.values())

    def key_of(self, name: str) -> str:
        return self._specs[name].key

    def users(self, key: str) -> list[str]:
        """The agents and models (not aliases) whose requests land on ``key`` without extra flags."""
        return [r.name for r in self._routes.values() if self._specs[r.name].key == key and r.kind != "alias"]
