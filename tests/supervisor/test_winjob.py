"""The Windows job object's structures match the Win32 layout (checked on every platform)."""

from __future__ import annotations

import ctypes

import pytest

from orchestrator.supervisor import winjob


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the sizes below are the 64-bit ABI's")
def test_structures_have_the_win32_sizes_and_offsets() -> None:
    # SetInformationJobObject rejects a buffer of the wrong size, so the layout is checked here,
    # on every platform, against the sizes in the Windows SDK headers.
    assert ctypes.sizeof(winjob.BasicLimitInformation) == 64
    assert ctypes.sizeof(winjob.IoCounters) == 48
    assert ctypes.sizeof(winjob.ExtendedLimitInformation) == 144
    assert winjob.BasicLimitInformation.limit_flags.offset == 16
    assert winjob.ExtendedLimitInformation.process_memory_limit.offset == 112
