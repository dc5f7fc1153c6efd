"""Running untrusted generated code: a separate ``python -I`` in a temporary directory, contained.

This is not a security boundary (a Python process cannot contain itself); it
keeps a wrong or hostile program from hurting the machine by accident:
- its own session, and the whole group is killed when it ends or times out,
  so nothing it starts outlives it;
- resource limits (POSIX): address space, CPU seconds, file size, processes;
- destructive functions disabled before the program runs (fork, exec, kill,
  file removal, subprocess and the like), as HumanEval's own harness does;
- passing means running to the end: a program that exits early, even with
  status 0, fails;
- a wall-clock timeout; output goes to size-limited files, not to memory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from orchestrator import procgroup

HARNESS = r"""
import sys
try:
    import resource
except ImportError:  # Windows: no rlimits; the timeout and the group kill still hold
    resource = None
memory_bytes, cpu_s, file_bytes, processes = (int(value) for value in sys.argv[2:6])
if resource is not None:
    for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NPROC, processes)):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass  # a hard limit already lower than ours: it is stricter, keep it
source = open(sys.argv[1], encoding="utf-8").read()

import builtins, os, shutil, subprocess
os.environ["OMP_NUM_THREADS"] = "1"
leave = os._exit  # ours alone: the program may not end itself with a status of its choice
for name in ("_exit", "kill", "killpg", "system", "popen", "putenv", "remove", "removedirs",
             "rmdir", "unlink", "rename", "renames", "replace", "truncate", "fchdir", "chdir",
             "chroot", "chmod", "fchmod", "chown", "fchown", "lchown", "setuid", "setgid",
             "fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp", "execv", "execve",
             "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnl", "spawnle",
             "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "startfile",
             "plock"):
    if hasattr(os, name):
        setattr(os, name, None)
for name in ("rmtree", "move", "chown"):
    setattr(shutil, name, None)
subprocess.Popen = None
for module in ("_posixsubprocess", "multiprocessing", "resource", "psutil", "ctypes", "pty"):
    sys.modules[module] = None
builtins.help = None
del builtins, os, shutil, subprocess
sys.argv = ["program.py"]
try:
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
except SystemExit as stop:  # exit(), quit(), sys.exit(): its tests did not all run
    print(f"the program exited (status {stop.code!r}) before its tests finished", file=sys.stderr, flush=True)
    leave(1)
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0
    memory_bytes: int = 2 * 2**30
    cpu_s: int = 10
    file_bytes: int = 16 * 2**20
    processes: int = 64


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed", "failed" or "timeout"
    detail: str  # the last lines of its stderr, or why it was stopped

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            file.seek(max(0, file.tell() - 4000))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


async def run_program(source: str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """Run ``source`` as a program; passed means it exited 0 within the timeout."""
    with tempfile.TemporaryDirectory(prefix="llama-sidecar-sandbox-") as scratch:
        directory = Path(scratch)
        program, harness = directory / "program.py", directory / "harness.py"
        await trio.Path(program).write_text(source, "utf-8")
        await trio.Path(harness).write_text(HARNESS, "utf-8")
        stdout, stderr = directory / "stdout.txt", directory / "stderr.txt"
        command = [
            sys.executable, "-I", str(harness), str(program),
            str(limits.memory_bytes), str(limits.cpu_s), str(limits.file_bytes), str(limits.processes),
        ]  # fmt: skip
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = await trio.lowlevel.open_process(
                command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
                **procgroup.spawn_options(),
            )
        try:
            with trio.move_on_after(limits.timeout_s) as waiting:
                await process.wait()
        finally:
            procgroup.kill_group(process.pid)  # whatever it started dies with it
            with trio.CancelScope(shield=True):
                await process.wait()
        if waiting.cancelled_caught:
            return Outcome("timeout", f"did not finish within {limits.timeout_s:g} s")
        returncode = process.returncode
        assert returncode is not None  # waited for above
        if returncode == 0:
            return Outcome("passed", "")
        return Outcome("failed", _tail(stderr) or procgroup.describe_exit(returncode))
