"""What each service manager needs to run the daemon: a systemd unit, a launchd plist, Windows commands.

Pure: a ``ServiceSpec`` in, text or argv lists out, for every platform on
every platform (so each is tested everywhere). ``manager`` decides where the
files go and runs the commands.
"""

from __future__ import annotations

import plistlib
import subprocess
from dataclasses import dataclass

NAME = "llama-sidecar"
LAUNCHD_LABEL = "org.llama-sidecar.daemon"
# systemd's watchdog: the daemon pings at half of it from its event loop (see sdnotify).
WATCHDOG_S = 30
STOP_MARGIN_S = 15  # beyond the daemon's own shutdown_grace_s + stop_grace_s + the cut of stuck clients
LOG_ROTATE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ServiceSpec:
    """One installation: the command, for whom, and how long a stop may take."""

    argv: tuple[str, ...]  # the daemon's command line, absolute paths
    user: bool  # a per-user service (systemd --user, a LaunchAgent, a logon task)
    stop_timeout_s: float  # how long the daemon may take to stop before it is killed
    log_dir: str  # where the service's own logs go where the platform has no journal
    run_as: str | None = None  # system-wide systemd units: the account (None: a dynamic one)

    @property
    def log_file(self) -> str:
        separator = "\\" if "\\" in self.log_dir else "/"  # a Windows folder keeps its own separator
        return f"{self.log_dir}{separator}{NAME}.log"


def stop_timeout(shutdown_grace_s: float, stop_grace_s: float) -> float:
    """Longer than the daemon's own bounded stop: drain requests, then stop each child."""
    return shutdown_grace_s + stop_grace_s + STOP_MARGIN_S


# -- systemd -----------------------------------------------------------------------


def systemd_quote(argument: str) -> str:
    """One ExecStart word: quoted when it needs to be, with systemd's own escapes ($ and % too)."""
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in argument for c in " \t\"'\\;") or not argument else escaped


def systemd_unit(spec: ServiceSpec) -> str:
    """A Type=notify unit (see sdnotify): ready when it serves, reload on SIGHUP, a watchdog, hardening."""
    hardening = [
        "NoNewPrivileges=yes",
    ]
    if not spec.user:
        # A user manager cannot set these up; a system one can, and still leaves the GPUs usable:
        # /dev is not hidden (no PrivateDevices), and the render/video groups open /dev/dri and
        # /dev/nvidia*. Models under /home stay readable (read-only).
        hardening += [
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "SupplementaryGroups=render video",
            f"User={spec.run_as}" if spec.run_as else "DynamicUser=yes",
        ]
    lines = [
        "# Installed by `orchestrator service install`; `orchestrator service uninstall` removes it.",
        "[Unit]",
        "Description=llama-sidecar: llama.cpp servers behind one OpenAI-compatible endpoint",
        "After=network.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={' '.join(systemd_quote(word) for word in spec.argv)}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2",
        # SIGTERM to the daemon alone (it stops its children in order), then SIGKILL to all that is left.
        "KillMode=mixed",
        f"TimeoutStopSec={spec.stop_timeout_s:g}",
        f"WatchdogSec={WATCHDOG_S}",
        # Our state files and the cache of learned --help tables (see STATE_DIRECTORY / CACHE_DIRECTORY).
        f"StateDirectory={NAME}",
        f"CacheDirectory={NAME}",
        *hardening,
        "",
        "[Install]",
        f"WantedBy={'default.target' if spec.user else 'multi-user.target'}",
    ]
    return "\n".join(lines) + "\n"


def systemd_commands(unit_name: str, *, user: bool, install: bool) -> list[list[str]]:
    systemctl = ["systemctl", *(["--user"] if user else [])]
    if install:
        return [[*systemctl, "daemon-reload"], [*systemctl, "enable", "--now", unit_name]]
    return [[*systemctl, "disable", "--now", unit_name], [*systemctl, "daemon-reload"]]


# -- launchd -------------------------------------------------------------------------


def launchd_plist(spec: ServiceSpec) -> bytes:
    """A LaunchAgent (per user) or LaunchDaemon: started at load, restarted after a crash."""
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": list(spec.argv),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},  # again after a crash, not after a clean stop
            "ThrottleInterval": 5,
            "ExitTimeOut": int(spec.stop_timeout_s),  # SIGTERM, then SIGKILL after this long
            "StandardOutPath": spec.log_file,
            "StandardErrorPath": spec.log_file,
            "ProcessType": "Interactive",  # not throttled like a background job: it serves requests
        }
    )


def launchd_domain(*, user: bool, uid: int) -> str:
    return f"gui/{uid}" if user else "system"


def launchd_commands(plist_path: str, *, user: bool, uid: int, install: bool) -> list[list[str]]:
    domain = launchd_domain(user=user, uid=uid)
    if install:
        return [["launchctl", "bootstrap", domain, plist_path]]
    return [["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"]]


# -- Windows -----------------------------------------------------------------------------


def nssm_commands(nssm: str, spec: ServiceSpec, *, install: bool) -> list[list[str]]:
    """A Windows service through NSSM: logs to files with rotation, Ctrl+C first on stop, restart on exit."""
    if not install:
        return [[nssm, "stop", NAME], [nssm, "remove", NAME, "confirm"]]
    executable, *arguments = spec.argv
    settings = {
        "AppParameters": subprocess.list2cmdline(arguments),
        "DisplayName": "llama-sidecar",
        "Description": "llama.cpp servers behind one OpenAI-compatible endpoint",
        "Start": "SERVICE_AUTO_START",
        "AppStdout": spec.log_file,
        "AppStderr": spec.log_file,
        "AppRotateFiles": "1",
        "AppRotateOnline": "1",
        "AppRotateBytes": str(LOG_ROTATE_BYTES),
        # Ctrl+C is a graceful stop for the daemon; wait for it before harsher methods.
        "AppStopMethodConsole": str(int(spec.stop_timeout_s * 1000)),
        "AppExit": "Default Restart",
    }
    return [
        [nssm, "install", NAME, executable],
        *([nssm, "set", NAME, key, value] for key, value in settings.items()),
        [nssm, "start", NAME],
    ]


def task_commands(spec: ServiceSpec, *, install: bool) -> list[list[str]]:
    """A scheduled task, where NSSM is not installed: at logon (per user) or at start-up (as SYSTEM)."""
    if not install:
        return [["schtasks", "/End", "/TN", NAME], ["schtasks", "/Delete", "/TN", NAME, "/F"]]
    when = ["/SC", "ONLOGON"] if spec.user else ["/SC", "ONSTART", "/RU", "SYSTEM"]
    command = subprocess.list2cmdline([*spec.argv, "--log-file", spec.log_file])  # no console to log to
    return [
        ["schtasks", "/Create", "/TN", NAME, "/TR", command, *when, "/RL", "LIMITED", "/F"],
        ["schtasks", "/Run", "/TN", NAME],
    ]
