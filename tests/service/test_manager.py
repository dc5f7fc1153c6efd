"""Where service files go and which commands run, per platform; `service install --print` and a real
install and uninstall on this machine against a recording systemctl."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.routing import LlamaServerBinary
from orchestrator.runtime import Daemon
from orchestrator.service import manager
from orchestrator.service.manager import Host, Plan
from orchestrator.service.units import ServiceSpec
from tests.conftest import free_port, routes_for
from tests.service.test_units import systemd_analyze

ARGV = ("/opt/venv/bin/python", "-m", "orchestrator", "serve", "--config", "/etc/llama-sidecar/c.toml")


def spec(host: Host, *, user: bool) -> ServiceSpec:
    return ServiceSpec(ARGV, user, 30, manager.log_dir(host, user=user))


LINUX = Host("linux", "/home/alice", {}, 1000)
MAC = Host("darwin", "/Users/alice", {}, 501)
WINDOWS = Host("win32", "C:\\Users\\alice", {"LOCALAPPDATA": "C:\\Users\\alice\\AppData\\Local"}, 0)


def test_linux_plans() -> None:
    user = manager.install_plan(LINUX, spec(LINUX, user=True))
    [(path, content)] = user.files
    assert path == "/home/alice/.config/systemd/user/llama-sidecar.service"
    assert b"WantedBy=default.target" in content
    assert user.commands[-1] == ("systemctl", "--user", "enable", "--now", "llama-sidecar.service")
    assert any("loginctl enable-linger" in note for note in user.notes)
    xdg = Host("linux", "/home/alice", {"XDG_CONFIG_HOME": "/cfg"}, 1000)
    assert manager.unit_path(xdg, user=True) == "/cfg/systemd/user/llama-sidecar.service"
    system = manager.install_plan(LINUX, spec(LINUX, user=False))
    assert system.files[0][0] == "/etc/systemd/system/llama-sidecar.service"
    assert system.commands == (
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "--now", "llama-sidecar.service"),
    )
    removal = manager.uninstall_plan(LINUX, user=False)
    assert removal.removals == ("/etc/systemd/system/llama-sidecar.service",)
    assert removal.commands[0] == ("systemctl", "disable", "--now", "llama-sidecar.service")


def test_macos_plans() -> None:
    agent = manager.install_plan(MAC, spec(MAC, user=True))
    [(path, content)] = agent.files
    assert path == "/Users/alice/Library/LaunchAgents/org.llama-sidecar.daemon.plist"
    assert b"/Users/alice/Library/Logs/llama-sidecar/llama-sidecar.log" in content
    assert "/Users/alice/Library/Logs/llama-sidecar" in agent.directories
    assert agent.commands == (("launchctl", "bootstrap", "gui/501", path),)
    daemon = manager.install_plan(MAC, spec(MAC, user=False))
    assert daemon.files[0][0] == "/Library/LaunchDaemons/org.llama-sidecar.daemon.plist"
    assert daemon.commands[0][2] == "system"
    assert manager.uninstall_plan(MAC, user=True).commands == (
        ("launchctl", "bootout", "gui/501/org.llama-sidecar.daemon"),
    )


def test_windows_plans_use_nssm_when_it_is_there_and_a_task_otherwise() -> None:
    with_nssm = Host("win32", WINDOWS.home, WINDOWS.environment, 0, lambda name: f"C:\\tools\\{name}.exe")
    service = manager.install_plan(with_nssm, spec(with_nssm, user=False))
    assert service.commands[0][:3] == ("C:\\tools\\nssm.exe", "install", "llama-sidecar")
    assert service.files == ()  # NSSM keeps the service's settings itself
    task = manager.install_plan(WINDOWS, spec(WINDOWS, user=True))
    assert task.commands[0][:2] == ("schtasks", "/Create")
    assert "C:\\Users\\alice\\AppData\\Local\\llama-sidecar\\logs" in task.directories
    assert "NSSM is not on PATH" in task.notes[0]


def test_print_shows_each_file_after_its_path_and_the_commands_apart() -> None:
    plan = Plan(
        files=(("/a/b.service", b"[Unit]\n"),), removals=("/old",), commands=(("systemctl", "start", "x y"),)
    )
    out: list[str] = []
    err: list[str] = []
    manager.show(plan, out.append, err.append)
    assert out == ["# /a/b.service\n[Unit]\n"]
    assert err == ["rm -f /old", "systemctl start 'x y'"]


def test_service_install_user_print_gives_a_unit_systemd_accepts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[llama_server]\nbin = "{fake_binary.path}"\n[models.m]\npath = "{fake_model()}"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["service", "install", "--user", "--print", "--config", "c.toml"]) == 0
    printed = capsys.readouterr()
    header, unit = printed.out.split("\n", 1)
    assert header.startswith("# ") and header.endswith("/systemd/user/llama-sidecar.service")
    assert f"--config {config}" in unit  # made absolute
    assert "systemctl --user enable --now llama-sidecar.service" in printed.err
    checked = systemd_analyze(unit, tmp_path, user=True)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr


def test_a_bad_config_is_refused_before_anything_is_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.toml").write_text('[models.m]\npath = "absent.gguf"\n')
    assert main(["service", "install", "--user", "--print", "--config", str(tmp_path / "c.toml")]) == 1
    assert "models.m.path: file not found" in capsys.readouterr().err


def test_a_system_install_without_root_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        manager.Host, "this_machine", classmethod(lambda _cls: Host("linux", "/home/a", {}, 1000))
    )
    assert main(["service", "install"]) == 1
    assert "a system-wide service needs root: run this with sudo, or pass --user" in capsys.readouterr().err


def test_install_and_uninstall_for_real_with_a_recording_systemctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[list[str]] = []

    def systemctl(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        calls.append(list(command))
        return subprocess.CompletedProcess(command, 0, "", "")

    host = Host("linux", str(tmp_path), {"XDG_CONFIG_HOME": str(tmp_path / "config")}, 1000)
    plan = manager.install_plan(
        host, ServiceSpec((sys.executable, "-m", "orchestrator", "serve"), True, 30, "/logs")
    )
    manager.carry_out(plan, systemctl)
    unit = tmp_path / "config" / "systemd" / "user" / "llama-sidecar.service"
    assert unit.is_file() and calls[-1] == ["systemctl", "--user", "enable", "--now", "llama-sidecar.service"]
    assert manager.installed_argv(host, user=True) == [sys.executable, "-m", "orchestrator", "serve"]
    manager.carry_out(manager.uninstall_plan(host, user=True), systemctl)
    assert not unit.exists() and calls[-2] == [
        "systemctl",
        "--user",
        "disable",
        "--now",
        "llama-sidecar.service",
    ]
    assert manager.installed_argv(host, user=True) is None


def test_a_failing_service_manager_command_is_a_clear_error(tmp_path: Path) -> None:
    def refuses(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "Failed to connect to bus: No medium found\n")

    plan = Plan(commands=(("systemctl", "--user", "daemon-reload"),))
    with pytest.raises(
        Exception, match=r"systemctl --user daemon-reload failed \(exit 1\): Failed to connect to bus"
    ):
        manager.carry_out(plan, refuses)
    manager.carry_out(plan, refuses, tolerate_failures=True)  # uninstalling: nothing to undo is fine


async def test_status_says_what_is_installed_and_whether_its_url_answers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_binary: LlamaServerBinary,
    fake_model: Callable[..., str],
) -> None:
    monkeypatch.setattr(
        manager.Host, "this_machine", classmethod(lambda _cls: Host("linux", str(tmp_path), {}, 1000))
    )
    config = tmp_path / "c.toml"
    port = free_port()
    config.write_text(f'[server]\nport = {port}\n[models.m]\npath = "{fake_model()}"\n')
    status = partial(main, ["service", "status", "--user", "--config", str(config)])
    assert await trio.to_thread.run_sync(status) == 3
    out = capsys.readouterr().out
    assert out.startswith("service: not installed") and "does not answer /health" in out
    daemon = Daemon(routes_for(load_config(config), fake_binary))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert await trio.to_thread.run_sync(status) == 3  # answering, but not installed as a service
        daemon.request_shutdown()
    out = capsys.readouterr().out
    assert f"url: http://127.0.0.1:{port} answers /health (0 sidecar(s))" in out
