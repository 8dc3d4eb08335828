"""Shared fixtures. Core tests that take `impl` run twice: compiled kernel and NumPy twin."""
from __future__ import annotations

from pathlib import Path

import pytest

from kairos.core import kernel
from kairos.core.catalog import load_catalog_file
from kairos.core.compiler import CompiledCatalog, compile_catalog

DATA = Path(__file__).parent / "core" / "data"


@pytest.fixture(params=["cython", "reference"])
def impl(request, monkeypatch) -> str:
    """Selects the kernel through the environment variable users set, as msgpack's CI does."""
    monkeypatch.setenv(kernel.PURE_ENV, "1" if request.param == "reference" else "0")
    assert kernel.load().IMPLEMENTATION == request.param
    return request.param


@pytest.fixture
def small() -> CompiledCatalog:
    return compile_catalog(load_catalog_file(DATA / "small.yaml"))
