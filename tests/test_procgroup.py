"""A child's whole process tree, as the stats sampler and the memory planner read it."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
import trio

from orchestrator import procgroup
from tests.conftest import wait_until

# A child that starts a grandchild, which starts a great-grandchild, then all wait for stdin to close.
_TREE = """
import subprocess, sys
depth = int(sys.argv[1])
if depth:
    subprocess.Popen([sys.executable, "-c", sys.argv[2], str(depth - 1), sys.argv[2]])
sys.stdin.read()
"""


@pytest.mark.parametrize("from_proc", [True, False], ids=["proc-children-lists", "psutil-scan"])
async def test_the_family_is_the_process_and_every_descendant(
    monkeypatch: pytest.MonkeyPatch, from_proc: bool
) -> None:
    if from_proc and not procgroup._proc_lists_children():
        pytest.skip("this kernel has no /proc/<pid>/task/<tid>/children")
    if not from_proc:
        monkeypatch.setattr(procgroup, "_proc_lists_children", lambda: False)
    child = await trio.lowlevel.open_process([sys.executable, "-c", _TREE, "2", _TREE], stdin=subprocess.PIPE)
    try:
        await wait_until(lambda: len(procgroup.process_family(child.pid)) == 3, timeout_s=20)
        family = {process.pid for process in procgroup.process_family(child.pid)}
        expected = {child.pid, *(p.pid for p in psutil.Process(child.pid).children(recursive=True))}
        assert family == expected and procgroup.process_family(child.pid)[0].pid == child.pid
    finally:
        for process in procgroup.process_family(child.pid)[::-1]:
            process.kill()
        await child.wait()


def test_the_family_of_a_process_that_is_gone_is_no_such_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(psutil.NoSuchProcess):
        procgroup.process_family(child.pid)
