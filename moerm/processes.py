"""Child processes that never outlive their parent.

On Linux a child asks the kernel for a signal when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), so services started by ``moerm up`` and the embedded
Redis-protocol servers stop even when their parent is killed with SIGKILL, which no
handler in the parent can catch. Two ways in:

- :func:`die_with_parent_preexec` for programs we do not own (``valkey-server``):
  a ``preexec_fn`` that only calls the C function resolved before the fork;
- :func:`die_with_parent` for our own services, called first thing in their ``main``
  when the launcher set ``MOERM_PARENT_PID``; it then also exits at once if that
  parent is already gone (the window between fork and the call).

Elsewhere (macOS) these do nothing and the docs say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PARENT_ENV = "MOERM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc.prctl


def die_with_parent_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the child receive ``sig``
    when the thread that started it exits (None where the platform has no such call)."""
    prctl = _prctl()
    if prctl is None:
        return None
    signum = ctypes.c_ulong(int(sig))

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return preexec


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a service started by the launcher (``MOERM_PARENT_PID`` set): receive ``sig``
    when the launcher dies, and exit now if it already has."""
    expected = os.environ.get(PARENT_ENV)
    if not expected:
        return
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), 0, 0, 0)
    if str(os.getppid()) != expected:
        os._exit(1)  # the launcher died before we could ask to follow it


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) plus the marker :func:`die_with_parent` reads."""
    return {**(env if env is not None else os.environ), PARENT_ENV: str(os.getpid())}
