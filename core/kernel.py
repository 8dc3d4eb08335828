"""Picks the scoring kernel: the compiled Cython module, or its NumPy twin.

Set KAIROS_PURE_PYTHON=1 to force the twin (as msgpack's MSGPACK_PUREPYTHON does); the test
suite runs the core's tests under both. `load()` reads the variable each time, so a process can
hold engines of both kinds.
"""
from __future__ import annotations

import os
from types import ModuleType

PURE_ENV = "KAIROS_PURE_PYTHON"


def pure_forced() -> bool:
    value = os.environ.get(PURE_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{PURE_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def load() -> ModuleType:
    """The kernel module: `_kernel` unless the twin is forced."""
    if pure_forced():
        from . import reference
        return reference
    from . import _kernel
    return _kernel
