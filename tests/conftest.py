"""Shared fixtures. Core tests that take `impl` run twice: compiled kernel and NumPy twin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kairos.core import kernel
from kairos.core.catalog import load_catalog_file
from kairos.core.compiler import CompiledCatalog, compile_catalog

# Servers in tests bind 127.0.0.1 only: the shards' data path too (Ray's workers inherit this)
os.environ.setdefault("KAIROS_DATA_HOST", "127.0.0.1")

DATA = Path(__file__).parent / "core" / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["cython", "reference"])
def impl(request, monkeypatch) -> str:
    """Selects the kernel through the environment variable users set, as msgpack's CI does."""
    monkeypatch.setenv(kernel.PURE_ENV, "1" if request.param == "reference" else "0")
    assert kernel.load().IMPLEMENTATION == request.param
    return request.param


@pytest.fixture
def small() -> CompiledCatalog:
    return compile_catalog(load_catalog_file(DATA / "small.yaml"))


@pytest.fixture
def run_bench():
    """`run_bench(module, out, *args)`: run `python -m bench.<module> ... --out OUT` as a
    person would; the JSON summary that is its last line of output."""
    return _run_bench


def _run_bench(module: str, out: Path, *args: str, timeout_s: float = 600) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=timeout_s)
    return json.loads(done.stdout.strip().splitlines()[-1])
