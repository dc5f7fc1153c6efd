"""Configuration: TOML or JSON into frozen dataclasses, with every problem named.

``parse_config`` turns an already-decoded mapping into a ``Config`` and collects
all problems (file, key, what was expected) before raising one ConfigError.
``load_config`` reads a file (UTF-8, a BOM tolerated) and resolves model paths
relative to it. Model files must exist: a typo is caught at start-up, not on
the first request.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orchestrator import admission, auth, llamaswap, placement
from orchestrator import flags as flagmod
from orchestrator.errors import ConfigError, FlagError, OrchestratorError
from orchestrator.flags import Flag, FlagTable
from orchestrator.policy import CrashLoopRule

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServerSettings:
    host: str = LOOPBACK
    port: int = 8080
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    # Files with more keys, one a line (a Kubernetes Secret, a systemd credential); read at each (re)load.
    api_keys_file: str | None = None
    admin_keys_file: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    shutdown_grace_s: float = 10.0  # on SIGTERM/SIGINT, in-flight requests get this long to finish
    drain_notice_s: float = 0.0  # before that, /health says 503 this long while new requests are still served
    agent_port: int | None = None  # HAProxy's agent check (see fleet.signals), on server.host
    metrics_without_key: bool = False  # GET /metrics open (the endpoint picker's scraper sends no key)
    allowed_hosts: tuple[str, ...] = ()  # Host names besides the loopback ones and `host` (see auth)
    allowed_origins: tuple[str, ...] = ()  # web origins besides the dashboard's own (see auth)
    default_model: str | None = None  # where a request that names no model goes (see RouteTable.default)
    send_loading_state: bool = False  # a streamed chat waiting for a load shows it as reasoning deltas


@dataclass(frozen=True)
class LlamaServerSettings:
    bin: str | None = None  # None: find one (see discovery.find_llama_server)
    base_args: tuple[Flag, ...] = ()
    health_timeout_s: float = 120.0
    health_interval_s: float = 5.0
    port_range: tuple[int, int] = (41000, 41999)
    stop_grace_s: float = 5.0
    upstream_idle_timeout_s: float = 300.0  # a proxied request that gets no byte for this long is cancelled
    # Copy each child's stderr lines into the daemon's log at info (else at debug, shown with -v).
    # They always go to the ring buffer and the log feeds; echoing ~10 lines a request costs CPU.
    echo_stderr: bool = False


@dataclass(frozen=True)
class PoolSettings:
    max_sidecars: int = 0  # live children at most; 0 = no count limit (memory decides)
    idle_ttl_s: float = 0.0  # 0 = never
    capacity_wait_s: float = 60.0  # a request waits this long for a busy pool, then 503
    drain_timeout_s: float = 30.0  # a stop waits this long for in-flight requests
    max_in_flight: int = 0  # requests one child serves at once; 0 = its own slot count
    max_queue: int = 64  # requests that may wait for a busy child; more get 429
    crash_loop: CrashLoopRule = field(default_factory=CrashLoopRule)  # when a failing model is not respawned
    memory_budget: str | None = None  # host memory for children: a size or a share; None: RAM - a reserve
    gpu_memory_budget: Mapping[str, str] = field(default_factory=dict)  # per device ("*": every GPU)
    prompt_cache_mib: int = 1024  # a child's --cache-ram when its flags set none (counted on the host)
    placement: str = "spread"  # which GPUs a new child gets: spread | pack | off (see placement)
    # A request that has waited this long for a slot of a model with replicas_max > 1 starts
    # another copy of its child, if one fits without stopping anything busy.
    replica_wait_s: float = 2.0
    replica_idle_ttl_s: float = 60.0  # a copy beyond the first stops once idle this long (0: as the first)


@dataclass(frozen=True)
class KvCacheSettings:
    """Children's KV cache kept across a swap (see supervisor.kvcache)."""

    enabled: bool = True
    # Slots with fewer cached tokens are not saved: re-processing 256 tokens takes about 2 s on
    # two CPU cores (SmolLM2-135M; far less on a GPU), while a file is saved and restored in
    # tens of milliseconds. Below that, a file is not worth its disk.
    min_tokens: int = 256
    disk_budget: str = "10%"  # a size, or a share of the free disk (counting the store's own files)
    timeout_s: float = 30.0  # a save of one child's slots, or a restore, gives up after this long
    dir: str | None = None  # None: the cache directory's kv/ (see dirs)


@dataclass(frozen=True)
class Placement:
    """How the pool treats a model's or agent's child: kept, first to go, started at boot."""

    pin: bool = False  # never stopped for room or idleness (only by hand, reload or shutdown)
    priority: int = 0  # among idle children, lower priorities are stopped first
    preload: bool = False  # started when the daemon starts (pinned ones always are)
    replicas_max: int = 1  # copies of its child the pool may run when requests queue for it


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str
    identity: str  # changes when the file does, so a replaced model gets a new child
    flags: tuple[Flag, ...] = ()
    aliases: tuple[str, ...] = ()
    bin: str | None = None  # this model's llama-server, if not llama_server.bin
    ttl_s: float | None = None  # this model's idle TTL, if not pool.idle_ttl_s
    allow_request_flags: bool = False
    placement: Placement = field(default_factory=Placement)
    send_loading_state: bool | None = None  # None: server.send_loading_state


@dataclass(frozen=True)
class AgentConfig:
    name: str
    model: str
    flags: tuple[Flag, ...] = ()
    allow_request_flags: bool = False
    placement: Placement | None = None  # None: the model's
    send_loading_state: bool | None = None  # None: the model's


@dataclass(frozen=True)
class Config:
    source: str
    server: ServerSettings = ServerSettings()
    llama_server: LlamaServerSettings = LlamaServerSettings()
    pool: PoolSettings = PoolSettings()
    kv_cache: KvCacheSettings = KvCacheSettings()
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    agents: Mapping[str, AgentConfig] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # worth a warning, not an error (e.g. flags passed unchecked)

    def bin_for(self, model: ModelConfig) -> str | None:
        """The llama-server setting that applies to ``model`` (None: find one)."""
        return model.bin or self.llama_server.bin

    def bins(self) -> set[str | None]:
        """Every ``bin`` setting a model runs with (None: the default binary)."""
        return {self.bin_for(model) for model in self.models.values()}


# Given a configured ``bin`` (None: the default one), the flags that binary declares.
FlagTableFor = Callable[[str | None], FlagTable]


def builtin_tables(_bin: str | None) -> FlagTable:
    return flagmod.builtin_table()


def file_identity(path: Path) -> str:
    """Real path, size and modification time: what makes a model file 'the same'."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


T = TypeVar("T")

_SECTIONS = ("server", "llama_server", "pool", "kv_cache", "models", "agents")
_PLACEMENT_KEYS = ("pin", "priority", "preload", "replicas_max")
# Every key a configuration may have, by table (the one list the parser and the docs' test read).
KNOWN_KEYS: Mapping[str, tuple[str, ...]] = {
    "server": tuple(f.name for f in dataclasses.fields(ServerSettings)),
    "llama_server": tuple(f.name for f in dataclasses.fields(LlamaServerSettings)),
    "pool": tuple(f.name for f in dataclasses.fields(PoolSettings)),
    "pool.crash_loop": ("failures", "window_s", "max_backoff_s"),
    "kv_cache": tuple(f.name for f in dataclasses.fields(KvCacheSettings)),
    "models.NAME": (
        "path", "flags", "aliases", "bin", "ttl_s", "allow_request_flags", "send_loading_state", "devices",
        *_PLACEMENT_KEYS,
    ),
    "agents.NAME": (
        "model", "flags", "allow_request_flags", "send_loading_state", "devices", *_PLACEMENT_KEYS
    ),
}


class _Table:
    """One table of the document: typed reads that record problems instead of stopping."""

    def __init__(
        self, problems: list[str], notes: list[str], source: str, key: str, data: Mapping[str, Any]
    ) -> None:
        self._problems = problems
        self._notes = notes
        self._source = source
        self.key = key
        self.data = data

    def problem(self, name: str, message: str) -> None:
        where = f"{self.key}.{name}" if self.key and name else self.key or name
        self._problems.append(f"{self._source}: {where}: {message}")

    def table(self, name: str, allowed: Sequence[str] | None = None) -> _Table:
        """The sub-table ``name``; with ``allowed``, any other key in it is a problem."""
        key = f"{self.key}.{name}" if self.key else name
        value = self.data.get(name, {})
        child = _Table(
            self._problems, self._notes, self._source, key, value if isinstance(value, Mapping) else {}
        )
        if not isinstance(value, Mapping):
            self.problem(name, f"expected a table, got {type(value).__name__}")
        for unknown in sorted(set(child.data) - set(child.data if allowed is None else allowed)):
            child.problem(unknown, f"unknown key; expected one of {', '.join(allowed or ())}")
        return child

    def value(self, name: str, expected: str, check: Callable[[Any], bool], default: T) -> T:
        if name not in self.data:
            return default
        value = self.data[name]
        if not check(value):
            self.problem(name, f"expected {expected}, got {value!r}")
            return default
        return value  # type: ignore[no-any-return]

    def number(self, name: str, default: float, minimum: float) -> float:
        value = self.value(name, f"a number >= {minimum:g}", _is_number, default)
        if value < minimum:
            self.problem(name, f"expected a number >= {minimum:g}, got {value!r}")
            return default
        return float(value)

    def optional_number(self, name: str, minimum: float) -> float | None:
        return self.number(name, math.nan, minimum) if name in self.data else None

    def integer(self, name: str, default: int, minimum: int) -> int:
        value = self.value(name, f"an integer >= {minimum}", _is_int, default)
        if value < minimum:
            self.problem(name, f"expected an integer >= {minimum}, got {value!r}")
            return default
        return value

    def text(self, name: str, expected: str, default: T) -> str | T:
        return self.value(name, expected, _is_nonempty_str, default)

    def keys(self, name: str) -> tuple[str, ...]:
        """Secrets: problems are described without showing the values."""
        keys = self.data.get(name, [])
        if not _is_string_list(keys) or any(len(key) < 16 or key != key.strip() for key in keys):
            self.problem(
                name, "expected a list of keys of at least 16 characters each, without surrounding spaces"
            )
            return ()
        return tuple(keys)

    def key_file(self, name: str, base_dir: Path) -> tuple[str, ...]:
        """The keys in the file ``name`` names, one a line (blank lines and # comments skipped)."""
        path = self.text(name, "a file path", None)
        if path is None:
            return ()
        try:
            lines = (base_dir / path).read_text("utf-8").splitlines()
        except OSError as error:
            self.problem(name, f"cannot read {path}: {error.strerror}")
            return ()
        keys = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        if any(len(key) < 16 for key in keys):
            self.problem(name, f"{path}: expected keys of at least 16 characters each, one a line")
            return ()
        return keys

    def strings(self, name: str) -> tuple[str, ...]:
        return tuple(self.value(name, "a list of strings", _is_string_list, []))

    def checked_text(self, name: str, problem_of: Callable[[str], str | None]) -> str | None:
        """A string that ``problem_of`` accepts, or None when it is absent (or wrong, with a problem)."""
        text = self.text(name, "a string", None)
        if text is None:
            return None
        if (problem := problem_of(text)) is not None:
            self.problem(name, problem)
            return None
        return text

    def checked_strings(self, name: str, problem_of: Callable[[str], str | None]) -> tuple[str, ...]:
        """A list of strings, each of which ``problem_of`` accepts (returns None for)."""
        values = self.strings(name)
        problems = [problem for value in values if (problem := problem_of(value)) is not None]
        for problem in problems:
            self.problem(name, problem)
        return () if problems else values

    def boolean(self, name: str, default: bool) -> bool:
        return self.value(name, "true or false", lambda v: isinstance(v, bool), default)

    def placed_flags(self, table: FlagTable) -> tuple[Flag, ...]:
        """A model's or agent's flags, with its ``devices`` (the GPUs it runs on) as their --device."""
        flags = self.flags("flags", table)
        if "devices" not in self.data:
            return flags
        devices = self.checked_strings("devices", placement.device_name_problem)
        if any(flag.name in flagmod.PLACEMENT_FLAGS for flag in flags):
            self.problem("devices", f"set either devices or the flags {', '.join(flagmod.PLACEMENT_FLAGS)}")
        elif not self.data["devices"]:
            self.problem("devices", 'expected at least one device name, e.g. ["CUDA1"]')
        elif devices:
            return (*flags, Flag("--device", (",".join(devices),)))
        return flags

    def flags(self, name: str, table: FlagTable) -> tuple[Flag, ...]:
        try:
            parsed = flagmod.parse_with_notes(self.strings(name), table)
        except FlagError as error:
            for problem in error.problems:
                self.problem(name, problem)
            return ()
        where = f"{self.key}.{name}"
        self._notes.extend(f"{self._source}: {where}: {note}" for note in parsed.notes)
        return parsed.flags


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_port(value: object) -> bool:
    return _is_int(value) and 0 <= value <= 65535  # type: ignore[operator]


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _origin_problem(value: str) -> str | None:
    if auth.parse_origin(value) is not None:
        return None
    return (
        f"{value!r} is not a web origin; expected a scheme, a host and an optional port such as "
        "'https://chat.example.com' or 'http://127.0.0.1:3000' (no path)"
    )


def _is_port_range(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(_is_int(port) and 1 <= port <= 65535 for port in value)
        and value[0] <= value[1]
    )


def parse_config(
    data: Mapping[str, Any],
    source: str,
    base_dir: Path,
    flag_table_for: FlagTableFor = builtin_tables,
    notes: Sequence[str] = (),
) -> Config:
    """Build a Config from decoded TOML/JSON; raise ConfigError listing every problem.

    Flags are checked against what the binary each model runs declares
    (``flag_table_for``); without it, against the built-in table.
    """
    problems: list[str] = []
    all_notes = list(notes)
    document = _Table(problems, all_notes, source, "", data)
    for unknown in sorted(set(data) - set(_SECTIONS)):
        document.problem(unknown, f"unknown section; expected one of {', '.join(_SECTIONS)}")

    server_t = document.table("server", KNOWN_KEYS["server"])
    server = ServerSettings(
        host=server_t.text("host", "a host name or address", LOOPBACK),
        port=server_t.value("port", "a port 0-65535", _is_port, 8080),
        api_keys=server_t.keys("api_keys") + server_t.key_file("api_keys_file", base_dir),
        admin_keys=server_t.keys("admin_keys") + server_t.key_file("admin_keys_file", base_dir),
        api_keys_file=server_t.text("api_keys_file", "a file path", None),
        admin_keys_file=server_t.text("admin_keys_file", "a file path", None),
        max_body_bytes=server_t.integer("max_body_bytes", ServerSettings.max_body_bytes, 1024),
        shutdown_grace_s=server_t.number("shutdown_grace_s", ServerSettings.shutdown_grace_s, 0.0),
        drain_notice_s=server_t.number("drain_notice_s", ServerSettings.drain_notice_s, 0.0),
        agent_port=server_t.value("agent_port", "a port 0-65535 (0: any free one)", _is_port, None),
        allowed_hosts=server_t.checked_strings("allowed_hosts", auth.host_entry_problem),
        allowed_origins=server_t.checked_strings("allowed_origins", _origin_problem),
        default_model=server_t.text("default_model", "an agent, model or alias name", None),
        send_loading_state=server_t.boolean("send_loading_state", False),
        metrics_without_key=server_t.boolean("metrics_without_key", False),
    )
    if auth.ANY_HOST in server.allowed_hosts and not server.api_keys:
        server_t.problem(
            "allowed_hosts",
            "'*' (any Host) needs server.api_keys: without keys any web page could reach the daemon "
            "by DNS rebinding",
        )

    llama_t = document.table("llama_server", KNOWN_KEYS["llama_server"])
    d = LlamaServerSettings()
    first, last = llama_t.value("port_range", "[first, last] ports in 1-65535", _is_port_range, d.port_range)
    default_bin = llama_t.text("bin", "a path or a command name", None)
    tables = _TableCache(flag_table_for, document)
    llama = LlamaServerSettings(
        bin=default_bin,
        # base_args are checked against the default binary's flags (only looked up when given).
        base_args=llama_t.flags("base_args", tables.get(default_bin, "llama_server.bin"))
        if llama_t.data.get("base_args")
        else (),
        health_timeout_s=llama_t.number("health_timeout_s", d.health_timeout_s, 0.1),
        health_interval_s=llama_t.number("health_interval_s", d.health_interval_s, 0.05),
        port_range=(first, last),
        stop_grace_s=llama_t.number("stop_grace_s", d.stop_grace_s, 0.0),
        upstream_idle_timeout_s=llama_t.number("upstream_idle_timeout_s", d.upstream_idle_timeout_s, 0.1),
        echo_stderr=llama_t.boolean("echo_stderr", d.echo_stderr),
    )

    pool_t = document.table("pool", KNOWN_KEYS["pool"])
    p = PoolSettings()
    pool = PoolSettings(
        max_sidecars=pool_t.integer("max_sidecars", p.max_sidecars, 0),
        idle_ttl_s=pool_t.number("idle_ttl_s", p.idle_ttl_s, 0.0),
        capacity_wait_s=pool_t.number("capacity_wait_s", p.capacity_wait_s, 0.0),
        drain_timeout_s=pool_t.number("drain_timeout_s", p.drain_timeout_s, 0.0),
        max_in_flight=pool_t.integer("max_in_flight", p.max_in_flight, 0),
        max_queue=pool_t.integer("max_queue", p.max_queue, 0),
        crash_loop=_crash_loop(pool_t.table("crash_loop", KNOWN_KEYS["pool.crash_loop"])),
        memory_budget=pool_t.checked_text("memory_budget", admission.size_problem),
        gpu_memory_budget=_gpu_budgets(pool_t),
        prompt_cache_mib=pool_t.integer("prompt_cache_mib", p.prompt_cache_mib, 0),
        placement=pool_t.value(
            "placement", f"one of {', '.join(placement.POLICIES)}", placement.POLICIES.__contains__,
            p.placement,
        ),
        replica_wait_s=pool_t.number("replica_wait_s", p.replica_wait_s, 0.0),
        replica_idle_ttl_s=pool_t.number("replica_idle_ttl_s", p.replica_idle_ttl_s, 0.0),
    )

    kv_t = document.table("kv_cache", KNOWN_KEYS["kv_cache"])
    k = KvCacheSettings()
    kv_dir = kv_t.text("dir", "a directory path", None)
    kv_cache = KvCacheSettings(
        enabled=kv_t.boolean("enabled", k.enabled),
        min_tokens=kv_t.integer("min_tokens", k.min_tokens, 1),
        disk_budget=kv_t.checked_text("disk_budget", admission.size_problem) or k.disk_budget,
        timeout_s=kv_t.number("timeout_s", k.timeout_s, 0.1),
        dir=None if kv_dir is None else str((base_dir / kv_dir).resolve()),
    )

    models = _parse_models(document.table("models"), base_dir, default_bin, tables)
    agents = _parse_agents(document.table("agents"), models, default_bin, tables)
    names = _check_names(document, models, agents)
    if server.default_model is not None and server.default_model not in names:
        server_t.problem(
            "default_model",
            f"expected an agent, model or alias name ({', '.join(names) or 'none configured'}), "
            f"got {server.default_model!r}",
        )
    if problems:
        raise ConfigError(problems)
    return Config(source, server, llama, pool, kv_cache, models, agents, tuple(all_notes))


def _gpu_budgets(pool_t: _Table) -> dict[str, str]:
    """``gpu_memory_budget = "90%"`` (every GPU) or a table by device name ("*": the others)."""
    if isinstance(pool_t.data.get("gpu_memory_budget"), str):
        every = pool_t.checked_text("gpu_memory_budget", admission.size_problem)
        return {} if every is None else {"*": every}
    table = pool_t.table("gpu_memory_budget")
    budgets = {device: table.checked_text(device, admission.size_problem) for device in table.data}
    return {device: budget for device, budget in budgets.items() if budget is not None}


def _placement(table: _Table, default: Placement | None) -> Placement | None:
    if not any(name in table.data for name in _PLACEMENT_KEYS):
        return default
    base = default or Placement()
    return Placement(
        pin=table.boolean("pin", base.pin),
        priority=table.value("priority", "an integer", _is_int, base.priority),
        preload=table.boolean("preload", base.preload),
        replicas_max=table.integer("replicas_max", base.replicas_max, 1),
    )


def _crash_loop(table: _Table) -> CrashLoopRule:
    default = CrashLoopRule()
    return CrashLoopRule(
        failures=table.integer("failures", default.failures, 1),
        window_s=table.number("window_s", default.window_s, 0.0),
        max_backoff_s=table.number("max_backoff_s", default.max_backoff_s, 0.0),
    )


class _TableCache:
    """One flag table per configured binary; a binary that cannot be found is a problem."""

    def __init__(self, flag_table_for: FlagTableFor, document: _Table) -> None:
        self._for = flag_table_for
        self._document = document
        self._tables: dict[str | None, FlagTable] = {}

    def get(self, bin_setting: str | None, key: str) -> FlagTable:
        if bin_setting not in self._tables:
            try:
                self._tables[bin_setting] = self._for(bin_setting)
            except OrchestratorError as error:
                self._document.problem(key, str(error))
                self._tables[bin_setting] = flagmod.builtin_table()
        return self._tables[bin_setting]


def _parse_models(
    section: _Table, base_dir: Path, default_bin: str | None, tables: _TableCache
) -> dict[str, ModelConfig]:
    models: dict[str, ModelConfig] = {}
    for name in section.data:
        table = section.table(name, KNOWN_KEYS["models.NAME"])
        path_text = table.text("path", "a path to a .gguf file", "")
        if not path_text:
            if "path" not in table.data:
                table.problem("path", "missing; expected a path to a .gguf file")
            continue
        path = Path(path_text).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            table.problem("path", f"file not found: {path}")
            continue
        model_bin = table.text("bin", "a path or a command name", None)
        flag_table = tables.get(
            model_bin or default_bin, f"{table.key}.bin" if model_bin else "llama_server.bin"
        )
        models[name] = ModelConfig(
            name=name,
            path=str(path),
            identity=file_identity(path),
            flags=table.placed_flags(flag_table),
            aliases=table.strings("aliases"),
            bin=model_bin,
            ttl_s=table.optional_number("ttl_s", 0.0),
            allow_request_flags=table.boolean("allow_request_flags", False),
            placement=_placement(table, Placement()) or Placement(),
            send_loading_state=_optional_boolean(table, "send_loading_state"),
        )
    return models


def _parse_agents(
    section: _Table, models: Mapping[str, ModelConfig], default_bin: str | None, tables: _TableCache
) -> dict[str, AgentConfig]:
    agents: dict[str, AgentConfig] = {}
    for name in section.data:
        table = section.table(name, KNOWN_KEYS["agents.NAME"])
        model = table.text("model", "the name of a [models.*] entry", "")
        if model not in models:
            known = ", ".join(models) or "none configured"
            table.problem("model", f"expected the name of a configured model ({known}), got {model!r}")
            continue
        flag_table = tables.get(models[model].bin or default_bin, "llama_server.bin")
        agents[name] = AgentConfig(
            name,
            model,
            table.placed_flags(flag_table),
            table.boolean("allow_request_flags", False),
            _placement(table, None),
            _optional_boolean(table, "send_loading_state"),
        )
    return agents


def _optional_boolean(table: _Table, name: str) -> bool | None:
    return table.boolean(name, False) if name in table.data else None


def _check_names(
    document: _Table, models: Mapping[str, ModelConfig], agents: Mapping[str, AgentConfig]
) -> list[str]:
    """Every name a request may use; a name claimed twice is a problem."""
    owner: dict[str, str] = {}
    claims = [(name, f"models.{name}") for name in models]
    claims += [(alias, f"models.{m.name}.aliases") for m in models.values() for alias in m.aliases]
    claims += [(name, f"agents.{name}") for name in agents]
    for name, key in claims:
        if name in owner:
            document.problem(key, f"the name {name!r} is already used by {owner[name]}; names must be unique")
        else:
            owner[name] = key
    return list(owner)


def decode_document(raw: bytes, source: str) -> Mapping[str, Any]:
    """Decode TOML or JSON by the file's suffix; a UTF-8 BOM is tolerated."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{source}: not valid UTF-8 ({error})"]) from error
    suffix = Path(source).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return llamaswap.load_yaml(text, source)
    try:
        if suffix == ".json":
            document = json.loads(text)
        elif suffix == ".toml":
            document = tomllib.loads(text)
        else:
            raise ConfigError(
                [f"{source}: unknown file type {suffix!r}; expected .toml, .json or a llama-swap .yaml"]
            )
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError([f"{source}: not valid {suffix[1:].upper()}: {error}"]) from error
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: expected a table/object at the top level"])
    return document


def load_config(path: str | os.PathLike[str], flag_table_for: FlagTableFor = builtin_tables) -> Config:
    """Read and validate a configuration file (flags against ``flag_table_for``, see parse_config)."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise ConfigError([f"{file}: cannot read: {error.strerror}"]) from error
    document = decode_document(raw, str(file))
    warnings: list[str] = []
    if file.suffix.lower() in (".yaml", ".yml"):  # a llama-swap config, served as it is
        conversion = llamaswap.convert(document, str(file), os.environ)
        document, warnings = conversion.document, conversion.warnings
    return parse_config(document, str(file), file.resolve().parent, flag_table_for, warnings)
