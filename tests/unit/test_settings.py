"""Tunables: read from KAIROS_* when kairos.cluster.settings is imported, and an impossible
value stops the process at start with the variable's name (in a fresh interpreter, as a
deployment would start)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kairos.cluster import settings


def imported_with(**overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **{f"KAIROS_{k}": v for k, v in overrides.items()}}
    code = "import kairos.cluster.settings as s; print(s.TICK_S, s.SHARD_QUEUE_LIMIT)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)


def test_overrides_are_read():
    done = imported_with(TICK_S="0.05", SHARD_QUEUE_LIMIT="500")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.05", "500"]


@pytest.mark.parametrize("name, value, message", [
    ("TICK_S", "0", "KAIROS_TICK_S must be >= 0.001 and <= 60, got '0'"),
    ("TICK_S", "soon", "KAIROS_TICK_S must be a number, got 'soon'"),
    ("TICK_S", "nan", "KAIROS_TICK_S must be >= 0.001 and <= 60, got 'nan'"),
    ("SHARD_QUEUE_LIMIT", "0", "KAIROS_SHARD_QUEUE_LIMIT must be >= 1, got '0'"),
    ("SHARD_QUEUE_LIMIT", "1.5", "KAIROS_SHARD_QUEUE_LIMIT must be an integer, got '1.5'"),
    ("PASSIVATE_IDLE_S", "0", "KAIROS_PASSIVATE_IDLE_S must be > 0, got '0'"),
    ("JOURNAL_POLICY", "sometimes", "KAIROS_JOURNAL_POLICY must be one of fsync, os, off, "
                                    "got 'sometimes'"),
])
def test_impossible_values_stop_the_import_naming_the_variable(name, value, message):
    done = imported_with(**{name: value})
    assert done.returncode != 0
    assert f"ValueError: {message}" in done.stderr


def test_every_tunable_has_its_default_here():
    """This session runs with no KAIROS_* overrides (tests/conftest.py clears them)."""
    assert settings.TICK_S == 0.1 and settings.SHARD_QUEUE_LIMIT == 20_000
    assert settings.JOURNAL_POLICY in settings.JOURNAL_POLICIES
