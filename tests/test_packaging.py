"""The package as users get it: a wheel and an sdist with everything in them, and a non-editable install
that works from anywhere (no source tree behind it)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

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
    assert found | {"orchestrator.data", "orchestrator.web"} == listed


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


def test_a_non_editable_install_is_a_complete_program(dist: Path, tmp_path: Path) -> None:
    [wheel] = dist.glob("*.whl")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
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
    assert found["package"].startswith(str(environment)), found["package"]
    assert found["flags"] > 100 and "built-in table" in found["flag_source"]  # the fallback --help table
    assert found["prompts"] == 14  # the A/B prompt set
    assert "<title>llama-sidecar</title>" in found["page"]
    assert "javascript" in found["script_type"] and found["script"] > 1000
