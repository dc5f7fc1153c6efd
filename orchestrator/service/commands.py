"""`orchestrator service install | uninstall | status` for the platform it runs on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from orchestrator.clisupport import load_cli_config
from orchestrator.config import Config
from orchestrator.discovery import demo_config
from orchestrator.errors import CommandError
from orchestrator.service import manager, units
from orchestrator.service.manager import Host, run_command
from orchestrator.service.units import ServiceSpec


def _config_of(path: str | None) -> tuple[Config, list[str]]:
    """The configuration the service will run (validated now, not at its first start), and its argv part."""
    if path is None:
        return demo_config(), []
    absolute = Path(path).expanduser().resolve()  # the service does not start where we are
    return load_cli_config(str(absolute)), ["--config", str(absolute)]


def _needs_root(host: Host, user: bool) -> None:
    if not user and host.platform != "win32" and host.uid != 0:
        raise CommandError("a system-wide service needs root: run this with sudo, or pass --user")


def cmd_install(args: argparse.Namespace) -> int:
    host = Host.this_machine()
    config, config_argv = _config_of(args.config)
    if not args.print:
        _needs_root(host, args.user)
    spec = ServiceSpec(
        argv=(sys.executable, "-m", "orchestrator", "serve", *config_argv),
        user=args.user,
        stop_timeout_s=units.stop_timeout(config.server.shutdown_grace_s, config.llama_server.stop_grace_s),
        log_dir=manager.log_dir(host, user=args.user),
        run_as=None if args.user else host.environment.get("SUDO_USER") or None,
    )
    plan = manager.install_plan(host, spec)
    if args.print:
        manager.show(plan, lambda text: print(text, end=""), lambda text: print(text, file=sys.stderr))
        return 0
    manager.carry_out(plan)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"installed {units.NAME} ({'per user' if args.user else 'system-wide'}); it serves {_url(config)}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    host = Host.this_machine()
    plan = manager.uninstall_plan(host, user=args.user)
    if args.print:
        manager.show(plan, lambda text: print(text, end=""), lambda text: print(text, file=sys.stderr))
        return 0
    _needs_root(host, args.user)
    manager.carry_out(plan, tolerate_failures=True)  # a half-installed service is removed all the same
    print(f"uninstalled {units.NAME}")
    return 0


def _url(config: Config) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind answers on loopback too
    return f"http://{f'[{host}]' if ':' in host else host}:{config.server.port}"


def cmd_status(args: argparse.Namespace) -> int:
    host = Host.this_machine()
    installed_argv = manager.installed_argv(host, user=args.user)
    path = manager.unit_path(host, user=args.user)
    checks = {name: run_command(command).returncode == 0 for name, command in
              manager.status_commands(host, user=args.user).items()}  # fmt: skip
    installed = installed_argv is not None if path else any(checks.values())
    state = ["installed" if installed else "not installed"] + [
        ("" if passed else "not ") + name for name, passed in checks.items()
    ]
    print(f"service: {', '.join(state)}" + (f" ({path})" if installed and path else ""))
    config_path = args.config
    if config_path is None and installed_argv and "--config" in installed_argv:
        config_path = installed_argv[installed_argv.index("--config") + 1]
    url = _url(_config_of(config_path)[0])
    try:
        health = httpx.get(f"{url}/health", timeout=5.0)
        answering = health.status_code == 200
        detail = (
            f"{health.json().get('sidecars', 0)} sidecar(s)" if answering else f"HTTP {health.status_code}"
        )
    except (httpx.HTTPError, ValueError) as error:
        answering, detail = False, f"{type(error).__name__}: {error}"
    print(f"url: {url} {'answers' if answering else 'does not answer'} /health ({detail})")
    return 0 if answering and installed else 3
