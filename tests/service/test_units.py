"""What each service manager gets: checked by systemd itself, by plistlib, and as argv lists."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.service import templates, units
from orchestrator.service.units import ServiceSpec

ARGV = (sys.executable, "-m", "orchestrator", "serve", "--config", "/srv/llama sidecar/config.toml")


def spec(*, user: bool, run_as: str | None = None) -> ServiceSpec:
    return ServiceSpec(ARGV, user, units.stop_timeout(10, 5), "/var/log/llama-sidecar", run_as)


def systemd_analyze(unit: str, tmp_path: Path, *, user: bool) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("the unit tests need systemd-analyze: apt-get install systemd")
    path = tmp_path / f"{units.NAME}.service"
    path.write_text(unit)
    runtime = tmp_path / "runtime"  # a user manager's runtime directory, which this machine has none of
    runtime.mkdir(mode=0o700)
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", str(path)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"XDG_RUNTIME_DIR": str(runtime)},
    )


@pytest.mark.parametrize(("user", "run_as"), [(False, "daemon"), (False, None), (True, None)])
def test_the_systemd_unit_passes_systemd_analyze_verify(
    tmp_path: Path, user: bool, run_as: str | None
) -> None:
    unit = units.systemd_unit(spec(user=user, run_as=run_as))
    checked = systemd_analyze(unit, tmp_path, user=user)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == "", checked.stderr  # not even a warning (an unknown key is only a warning)


def test_the_system_unit_is_a_hardened_notify_service_that_keeps_gpus_usable() -> None:
    unit = units.systemd_unit(spec(user=False, run_as="alice"))
    lines = unit.splitlines()
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "KillMode=mixed",
        "TimeoutStopSec=30",  # longer than shutdown_grace_s (10) + stop_grace_s (5)
        f"WatchdogSec={units.WATCHDOG_S}",
        "StateDirectory=llama-sidecar",
        "CacheDirectory=llama-sidecar",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "SupplementaryGroups=render video",
        "User=alice",
        "WantedBy=multi-user.target",
    ):
        assert expected in lines, expected
    assert not any(line.startswith(("PrivateDevices", "DevicePolicy")) for line in lines)  # /dev/dri, nvidia
    [exec_start] = [line for line in lines if line.startswith("ExecStart=")]
    assert (
        exec_start
        == f'ExecStart={sys.executable} -m orchestrator serve --config "/srv/llama sidecar/config.toml"'
    )
    assert "DynamicUser=yes" in units.systemd_unit(spec(user=False)).splitlines()  # no account given


def test_a_user_unit_has_only_what_a_user_manager_can_do() -> None:
    lines = units.systemd_unit(spec(user=True)).splitlines()
    assert "WantedBy=default.target" in lines and "NoNewPrivileges=yes" in lines
    assert not any(
        line.startswith(("User=", "SupplementaryGroups", "ProtectSystem", "DynamicUser")) for line in lines
    )


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("/usr/bin/python", "/usr/bin/python"),
        ("/srv/my models/c.toml", '"/srv/my models/c.toml"'),
        ("50%", "50%%"),
        ("$HOME", "$$HOME"),
        ('say "hi"', '"say \\"hi\\""'),
        ("", '""'),
    ],
)
def test_exec_start_words_are_quoted_for_systemd(word: str, quoted: str) -> None:
    assert units.systemd_quote(word) == quoted


def test_systemctl_commands() -> None:
    assert units.systemd_commands("x.service", user=True, install=True) == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "x.service"],
    ]
    assert units.systemd_commands("x.service", user=False, install=False) == [
        ["systemctl", "disable", "--now", "x.service"],
        ["systemctl", "daemon-reload"],
    ]


@pytest.mark.parametrize("user", [False, True])
def test_the_launchd_plist_has_what_launchd_needs(user: bool) -> None:
    document = plistlib.loads(units.launchd_plist(spec(user=user)))
    assert document["Label"] == units.LAUNCHD_LABEL
    assert document["ProgramArguments"] == list(ARGV)
    assert document["RunAtLoad"] is True
    assert document["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash only
    assert (
        document["StandardOutPath"]
        == document["StandardErrorPath"]
        == "/var/log/llama-sidecar/llama-sidecar.log"
    )
    assert document["ExitTimeOut"] == 30


def test_launchctl_commands() -> None:
    plist = "/Users/a/Library/LaunchAgents/org.llama-sidecar.daemon.plist"
    assert units.launchd_commands(plist, user=True, uid=501, install=True) == [
        ["launchctl", "bootstrap", "gui/501", plist]
    ]
    assert units.launchd_commands(plist, user=False, uid=0, install=False) == [
        ["launchctl", "bootout", "system/org.llama-sidecar.daemon"]
    ]


def test_a_windows_service_through_nssm() -> None:
    windows = ServiceSpec(
        ("C:\\Python\\python.exe", "-m", "orchestrator", "serve", "--config", "C:\\llama sidecar\\c.toml"),
        False,
        30,
        "C:\\ProgramData\\llama-sidecar\\logs",
    )
    commands = units.nssm_commands("C:\\tools\\nssm.exe", windows, install=True)
    assert commands[0] == ["C:\\tools\\nssm.exe", "install", "llama-sidecar", "C:\\Python\\python.exe"]
    settings = {command[3]: command[4] for command in commands if command[1] == "set"}
    assert settings["AppParameters"] == '-m orchestrator serve --config "C:\\llama sidecar\\c.toml"'
    assert (
        settings["AppStdout"]
        == settings["AppStderr"]
        == "C:\\ProgramData\\llama-sidecar\\logs\\llama-sidecar.log"
    )
    assert settings["AppRotateFiles"] == "1" and int(settings["AppRotateBytes"]) > 0
    assert settings["AppStopMethodConsole"] == "30000"  # Ctrl+C, a graceful stop, is given the whole timeout
    assert settings["AppExit"] == "Default Restart"
    assert commands[-1] == ["C:\\tools\\nssm.exe", "start", "llama-sidecar"]
    assert units.nssm_commands("nssm", windows, install=False) == [
        ["nssm", "stop", "llama-sidecar"],
        ["nssm", "remove", "llama-sidecar", "confirm"],
    ]


@pytest.mark.parametrize(
    ("user", "when"), [(True, ["/SC", "ONLOGON"]), (False, ["/SC", "ONSTART", "/RU", "SYSTEM"])]
)
def test_a_scheduled_task_where_there_is_no_nssm(user: bool, when: list[str]) -> None:
    task = ServiceSpec(("C:\\Py\\python.exe", "-m", "orchestrator", "serve"), user, 30, "C:\\logs")
    create, run = units.task_commands(task, install=True)
    assert create[:5] == ["schtasks", "/Create", "/TN", "llama-sidecar", "/TR"]
    assert create[5] == "C:\\Py\\python.exe -m orchestrator serve --log-file C:\\logs\\llama-sidecar.log"
    assert create[6 : 6 + len(when)] == when and create[-1] == "/F"
    assert run == ["schtasks", "/Run", "/TN", "llama-sidecar"]
    assert units.task_commands(task, install=False)[-1] == [
        "schtasks",
        "/Delete",
        "/TN",
        "llama-sidecar",
        "/F",
    ]


def test_the_examples_in_ops_are_what_the_code_renders() -> None:
    ops = Path(__file__).resolve().parents[2] / "ops"
    for relative, text in templates.render_all().items():
        assert (ops / relative).read_text("utf-8") == text, (
            f"ops/{relative}: python -m orchestrator.service.templates ops"
        )
