"""`orchestrator service install | uninstall | status`: where the service files go, and the commands.

A ``Plan`` is what an install or uninstall would do on a platform: files to
write or remove and the service manager's commands, as argv lists. ``--print``
shows it (files on standard output, each after a ``# PATH`` line; commands on
standard error); otherwise ``carry_out`` does it. Where things go is decided
by ``Host`` (platform, home, environment, uid, the programs on PATH), so every
platform's plan is tested on any machine.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from orchestrator.errors import CommandError
from orchestrator.service import units
from orchestrator.service.units import NAME, ServiceSpec


@dataclass(frozen=True)
class Host:
    """The machine an installation is for."""

    platform: str  # sys.platform
    home: str
    environment: Mapping[str, str] = field(default_factory=dict)
    uid: int = 0
    which: Callable[[str], str | None] = lambda _name: None  # a program on PATH

    @classmethod
    def this_machine(cls) -> Host:
        return cls(
            sys.platform, str(Path.home()), dict(os.environ), getattr(os, "getuid", lambda: 0)(), shutil.which
        )

    def path(self, *parts: str) -> PurePath:
        return PureWindowsPath(*parts) if self.platform == "win32" else PurePosixPath(*parts)


@dataclass(frozen=True)
class Plan:
    """What an install or uninstall does: directories to make, files to write or remove, commands."""

    directories: tuple[str, ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()
    removals: tuple[str, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    notes: tuple[str, ...] = ()


def unit_path(host: Host, *, user: bool) -> str:
    """Where the service's definition lives (a unit, a plist; on Windows, none: the manager keeps it)."""
    if host.platform.startswith("linux"):
        if user:
            config_home = host.environment.get("XDG_CONFIG_HOME") or str(host.path(host.home, ".config"))
            return str(host.path(config_home, "systemd", "user", f"{NAME}.service"))
        return f"/etc/systemd/system/{NAME}.service"
    if host.platform == "darwin":
        folder = (
            host.path(host.home, "Library", "LaunchAgents") if user else host.path("/Library/LaunchDaemons")
        )
        return str(folder / f"{units.LAUNCHD_LABEL}.plist")
    return ""


def log_dir(host: Host, *, user: bool) -> str:
    """Where the service's logs go where there is no journal (on Linux: the journal, see the unit)."""
    if host.platform == "darwin":
        base = host.path(host.home, "Library", "Logs") if user else host.path("/Library/Logs")
        return str(base / NAME)
    if host.platform == "win32":
        variable = "LOCALAPPDATA" if user else "ProgramData"
        default = host.path(host.home, "AppData", "Local") if user else host.path("C:\\ProgramData")
        return str(host.path(host.environment.get(variable) or str(default), NAME, "logs"))
    return str(host.path(host.home, ".local", "state", NAME)) if user else f"/var/log/{NAME}"


LINGER_NOTE = "a user service stops when you log out, unless you run: loginctl enable-linger"


def _argvs(commands: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(command) for command in commands)


def _unsupported(host: Host) -> CommandError:
    return CommandError(
        f"no service support for platform {host.platform!r} (Linux, macOS and Windows have it)"
    )


def install_plan(host: Host, spec: ServiceSpec) -> Plan:
    if host.platform.startswith("linux"):
        path = unit_path(host, user=spec.user)
        return Plan(
            (str(PurePosixPath(path).parent),),
            ((path, units.systemd_unit(spec).encode()),),
            commands=_argvs(units.systemd_commands(f"{NAME}.service", user=spec.user, install=True)),
            notes=(LINGER_NOTE,) if spec.user else (),
        )
    if host.platform == "darwin":
        path = unit_path(host, user=spec.user)
        return Plan(
            (str(PurePosixPath(path).parent), spec.log_dir),
            ((path, units.launchd_plist(spec)),),
            commands=_argvs(units.launchd_commands(path, user=spec.user, uid=host.uid, install=True)),
        )
    if host.platform == "win32":
        nssm = host.which("nssm")
        if nssm is not None:
            commands = units.nssm_commands(nssm, spec, install=True)
            note = f"a Windows service through NSSM ({nssm}); its log: {spec.log_file}"
        else:
            commands = units.task_commands(spec, install=True)
            when = "at logon" if spec.user else "at start-up"
            note = f"NSSM is not on PATH: a scheduled task instead ({when}); its log: {spec.log_file}"
        return Plan((spec.log_dir,), commands=_argvs(commands), notes=(note,))
    raise _unsupported(host)


def uninstall_plan(host: Host, *, user: bool) -> Plan:
    if host.platform.startswith("linux"):
        commands = units.systemd_commands(f"{NAME}.service", user=user, install=False)
        return Plan(removals=(unit_path(host, user=user),), commands=_argvs(commands))
    if host.platform == "darwin":
        path = unit_path(host, user=user)
        commands = units.launchd_commands(path, user=user, uid=host.uid, install=False)
        return Plan(removals=(path,), commands=_argvs(commands))
    if host.platform == "win32":
        nssm = host.which("nssm")
        spec = ServiceSpec((), user, 0, log_dir(host, user=user))
        commands = (
            units.nssm_commands(nssm, spec, install=False)
            if nssm
            else units.task_commands(spec, install=False)
        )
        return Plan(commands=_argvs(commands))
    raise _unsupported(host)


def status_commands(host: Host, *, user: bool) -> dict[str, list[str]]:
    """The commands whose success says the service is enabled, and running."""
    if host.platform.startswith("linux"):
        systemctl = ["systemctl", *(["--user"] if user else [])]
        return {
            "enabled": [*systemctl, "is-enabled", "--quiet", f"{NAME}.service"],
            "running": [*systemctl, "is-active", "--quiet", f"{NAME}.service"],
        }
    if host.platform == "darwin":
        domain = units.launchd_domain(user=user, uid=host.uid)
        return {"running": ["launchctl", "print", f"{domain}/{units.LAUNCHD_LABEL}"]}
    nssm = host.which("nssm")
    if nssm is not None:
        return {"running": [nssm, "status", NAME]}
    return {"enabled": ["schtasks", "/Query", "/TN", NAME]}


# -- doing it ----------------------------------------------------------------------------


def show(plan: Plan, out: Callable[[str], None], err: Callable[[str], None]) -> None:
    """What ``carry_out`` would do: each file after a ``# PATH`` line, and the commands."""
    for path, content in plan.files:
        out(f"# {path}\n{content.decode()}")
    for path in plan.removals:
        err(f"rm -f {shlex.quote(path)}")
    for command in plan.commands:
        err(shlex.join(command))
    for note in plan.notes:
        err(f"note: {note}")


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CommandError(f"cannot run {shlex.join(command)}: {error}") from error


def carry_out(plan: Plan, run: Runner = run_command, *, tolerate_failures: bool = False) -> None:
    """Make the directories, write and remove the files, run the commands; stop at the first failure.

    ``tolerate_failures``: for uninstalling, where a step may find nothing to undo.
    """
    try:
        for directory in plan.directories:
            Path(directory).mkdir(parents=True, exist_ok=True)
        for path, content in plan.files:
            Path(path).write_bytes(content)
        for path in plan.removals:
            Path(path).unlink(missing_ok=True)
    except OSError as error:
        raise CommandError(
            f"{error.filename}: {error.strerror} (a system-wide service needs root)"
        ) from error
    for command in plan.commands:
        done = run(command)
        if done.returncode != 0 and not tolerate_failures:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise CommandError(f"{shlex.join(command)} failed (exit {done.returncode}): {' '.join(detail)}")


def installed_argv(host: Host, *, user: bool) -> list[str] | None:
    """The daemon's command line as the installed unit or plist has it, or None."""
    path = Path(unit_path(host, user=user)) if unit_path(host, user=user) else None
    if path is None or not path.is_file():
        return None
    if host.platform == "darwin":
        return list(plistlib.loads(path.read_bytes()).get("ProgramArguments", []))
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))
    return None
