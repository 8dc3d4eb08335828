"""Fixtures of the runtime's tests."""
from __future__ import annotations

import pytest

from kairos.core.compiler import default_compiled


@pytest.fixture(scope="module")
def compiled():
    """The default catalog, compiled once per module."""
    return default_compiled()
