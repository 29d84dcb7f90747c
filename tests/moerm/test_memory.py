"""moerm.memory: glibc's malloc is told to keep freed memory (the model services call it
at start-up)."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from moerm.memory import keep_freed_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only"
)
def test_mallopt_accepts_the_settings_on_glibc() -> None:
    assert ctypes.util.find_library("c")
    assert keep_freed_memory() is True
