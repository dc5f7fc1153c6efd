"""The service files as examples under ops/, for people who deploy with their own tools.

They are rendered from the same code as ``orchestrator service install`` (a
test keeps ops/ equal to this rendering), with example paths to adapt:

    python -m orchestrator.service.templates ops/    # rewrite them after a change
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.service import units
from orchestrator.service.units import ServiceSpec

_STOP = units.stop_timeout(10, 5)  # the defaults of server.shutdown_grace_s and llama_server.stop_grace_s
LINUX_ARGV = ("/opt/llama-sidecar/.venv/bin/python", "-m", "orchestrator", "serve", "--config",
              "/etc/llama-sidecar/config.toml")  # fmt: skip
MAC_ARGV = ("/Users/you/llama-sidecar/.venv/bin/python", "-m", "orchestrator", "serve", "--config",
            "/Users/you/llama-sidecar/config.toml")  # fmt: skip
WINDOWS_ARGV = ("C:\\llama-sidecar\\.venv\\Scripts\\python.exe", "-m", "orchestrator", "serve", "--config",
                "C:\\llama-sidecar\\config.toml")  # fmt: skip


def powershell(command: Sequence[str]) -> str:
    """One PowerShell call: every word single-quoted, as PowerShell takes it literally."""
    return "& " + " ".join("'" + word.replace("'", "''") + "'" for word in command)


def _script(title: str, commands: Sequence[Sequence[str]]) -> str:
    header = [
        f"# {title}",
        "# Rendered by `python -m orchestrator.service.templates`; `orchestrator service install` does",
        "# the same on this machine. Adapt the paths, then run this in PowerShell (as an administrator",
        "# for a service).",
    ]
    return "\n".join([*header, *(powershell(command) for command in commands)]) + "\n"


def render_all() -> dict[str, str]:
    """Every example file, by its path under ops/."""
    system = ServiceSpec(LINUX_ARGV, False, _STOP, "/var/log/llama-sidecar", "llama")
    user = ServiceSpec(LINUX_ARGV, True, _STOP, "/var/log/llama-sidecar")
    agent = ServiceSpec(MAC_ARGV, True, _STOP, "/Users/you/Library/Logs/llama-sidecar")
    windows = ServiceSpec(WINDOWS_ARGV, False, _STOP, "C:\\ProgramData\\llama-sidecar\\logs")
    logon = ServiceSpec(WINDOWS_ARGV, True, _STOP, "C:\\Users\\you\\AppData\\Local\\llama-sidecar\\logs")
    return {
        "systemd/llama-sidecar.service": units.systemd_unit(system),
        "systemd/llama-sidecar-user.service": units.systemd_unit(user),
        f"launchd/{units.LAUNCHD_LABEL}.plist": units.launchd_plist(agent).decode(),
        "windows/install-service.ps1": _script(
            "llama-sidecar as a Windows service, through NSSM (https://nssm.cc, on PATH)",
            units.nssm_commands("nssm", windows, install=True),
        ),
        "windows/install-task.ps1": _script(
            "llama-sidecar as a scheduled task at logon, where NSSM is not installed",
            units.task_commands(logon, install=True),
        ),
    }


def main(argv: Sequence[str]) -> int:
    folder = Path(argv[0] if argv else "ops")
    for relative, text in render_all().items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
