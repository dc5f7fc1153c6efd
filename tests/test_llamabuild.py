"""`orchestrator llama-server build`: the cache per CPU, where the build goes, and its errors.

The compile itself (5 minutes) runs in CI through ops/install.sh on a machine the prebuilt wheel
does not suit, and the fresh-venv test in test_packaging.py runs this command end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import llamabuild
from orchestrator.cli import main
from orchestrator.dirs import BUILD_CACHE_DIR_ENV, DATA_DIR_ENV
from orchestrator.errors import BuildError


def fake_build(path: Path, *, works: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'version: 7 (test build)'\n" if works else "#!/bin/sh\nexit 132\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def build_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv(BUILD_CACHE_DIR_ENV, str(tmp_path / "build-cache"))
    return tmp_path / "build-cache"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with the shell's Linux recipe")
def test_the_cpu_signature_is_the_one_earlier_builds_were_cached_under() -> None:
    shell = subprocess.run(
        ["sh", "-c", "(uname -sm; grep -m1 '^flags' /proc/cpuinfo) | sha256sum | cut -c1-12"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert llamabuild.cpu_signature() == shell.stdout.strip()
    assert llamabuild.cached_binary().parent.name == f"llama-server-11434.0.0-{shell.stdout.strip()}"


def test_a_cached_build_is_used_without_compiling(
    build_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = fake_build(llamabuild.cached_binary())
    monkeypatch.setenv("PATH", "")  # no cmake, no compiler: none is needed
    said: list[str] = []
    assert llamabuild.build(said.append) == cached
    assert said == [f"using the build cached at {cached}"]


def test_without_cmake_the_error_says_what_to_install(
    build_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_build(llamabuild.cached_binary(), works=False)  # a cached build that does not run is not used
    monkeypatch.setenv("PATH", "")
    needs = r"needs cmake and a C\+\+ compiler \(Debian/Ubuntu: apt-get install"
    with pytest.raises(BuildError, match=needs):
        llamabuild.build(lambda _text: None)


def test_the_build_goes_next_to_this_python_or_else_to_the_user_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setattr("sysconfig.get_path", lambda _name: str(tmp_path))
    assert llamabuild.default_destination() == tmp_path
    monkeypatch.setattr("sysconfig.get_path", lambda _name: str(tmp_path / "no-such-env" / "bin"))
    assert llamabuild.default_destination() == tmp_path / "data" / "bin"


def test_install_replaces_a_previous_copy_whole(tmp_path: Path) -> None:
    first = fake_build(tmp_path / "one" / "llama-server")
    destination = tmp_path / "venv" / "bin"
    installed = llamabuild.install(first, destination)
    assert installed == destination / "llama-server"
    assert llamabuild.version_of(installed) == "version: 7 (test build)"
    second = tmp_path / "two" / "llama-server"
    second.parent.mkdir()
    second.write_text("#!/bin/sh\necho 'version: 8'\n")
    llamabuild.install(second, destination)
    assert llamabuild.version_of(installed) == "version: 8"
    assert sorted(p.name for p in destination.iterdir()) == ["llama-server"]  # no partial copy left
    (tmp_path / "file").write_text("")
    with pytest.raises(BuildError, match=r"cannot install llama-server into .*file/bin"):
        llamabuild.install(first, tmp_path / "file" / "bin")


def test_the_command_installs_and_discovery_lists_it(
    build_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_build(llamabuild.cached_binary())
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setattr("sysconfig.get_path", lambda _name: str(tmp_path / "not-writable" / "bin"))
    assert main(["llama-server", "build"]) == 0
    out, err = capsys.readouterr()
    installed = tmp_path / "data" / "bin" / "llama-server"
    assert out.strip() == f"installed {installed} (version: 7 (test build))"
    assert "using the build cached at" in err
    assert main(["llama-server", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"2. {installed} (built for this CPU, for this user): used" in listing
    assert listing.strip().endswith(f"llama-server: {installed} (build)")


def test_a_failing_step_names_its_log(build_cache: Path, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    failed = r"compiling llama-server failed \(exit 3\); the whole log is .*build\.log"
    with pytest.raises(BuildError, match=failed):
        llamabuild._run(["sh", "-c", "echo step one; echo broken >&2; exit 3"], log, "compiling")
    assert "broken" in log.read_text()
