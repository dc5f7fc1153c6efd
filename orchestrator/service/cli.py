"""The `service` command line: its parser here, its commands in service.commands, imported only when
one runs (so that `orchestrator serve` does not load the HTTP client and the tools' modules)."""

from __future__ import annotations

import argparse

from orchestrator.clisupport import lazy_handler

_COMMANDS = "orchestrator.service.commands"


def add_service_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = commands.add_parser("service", help="run the daemon as a service (systemd, launchd, Windows)")
    tools = service.add_subparsers(dest="service_command", required=True, metavar="SUBCOMMAND")
    for name, handler, text in (
        ("install", lazy_handler(_COMMANDS, "cmd_install"), "install and start the service"),
        ("uninstall", lazy_handler(_COMMANDS, "cmd_uninstall"), "stop and remove the service"),
        ("status", lazy_handler(_COMMANDS, "cmd_status"), "installed? enabled? running? and does it answer?"),
    ):
        command = tools.add_parser(name, help=text)
        command.add_argument(
            "--user", action="store_true", help="a per-user service (default: system-wide, needs root)"
        )
        if name != "uninstall":
            command.add_argument("--config", metavar="PATH", help="the config to serve (default: the demo)")
        if name != "status":
            command.add_argument(
                "--print", action="store_true", help="show the files and commands instead of running them"
            )
        command.set_defaults(handler=handler)
