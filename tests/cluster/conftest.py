"""Fixtures of the runtime's tests."""
from __future__ import annotations

import pytest

from kairos.core.catalog import load_default_catalog
from kairos.core.compiler import compile_catalog


@pytest.fixture(scope="module")
def compiled():
    """The default catalog, compiled once per module."""
    return compile_catalog(load_default_catalog())
