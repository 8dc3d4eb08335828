"""The compiled kernel and its twin expose one API, and the numbers both sides use agree."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kairos.core import _kernel, kernel, models, reference
from kairos.core.compiler import Reason
from kairos.core.rules import Op

API = ("CatalogView", "StateView", "ModelView", "Workspace", "apply_events", "decide",
       "decide_one", "normals", "predictors", "record_outcomes", "IMPLEMENTATION")


@pytest.mark.parametrize("name", API)
def test_both_kernels_export_the_same_api(name):
    assert hasattr(_kernel, name) and hasattr(reference, name)


def test_opcodes_and_reasons_agree_with_python():
    assert _kernel.OPCODES == {op.name: op.value for op in Op}
    assert _kernel.REASONS == {r.name: r.value for r in Reason}


def test_the_one_example_step_has_the_twins_constants():
    assert _kernel.ONE_EXAMPLE == {"probit_scale2": models.PROBIT_SCALE2,
                                   "mills_asymptotic": models.MILLS_ASYMPTOTIC}


@pytest.mark.parametrize("value, expected", [("1", "reference"), ("0", "cython"),
                                             ("", "cython")])
def test_environment_variable_forces_the_twin(value, expected):
    env = {**os.environ, kernel.PURE_ENV: value}
    out = subprocess.run([sys.executable, "-c",
                          "from kairos.core import kernel; print(kernel.load().IMPLEMENTATION)"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_the_engine_does_not_import_the_twin():
    env = {**os.environ, kernel.PURE_ENV: "0"}
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from kairos.core import engine; "
                          "print('kairos.core.reference' in sys.modules)"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv(kernel.PURE_ENV, "yes")
    with pytest.raises(ValueError, match="KAIROS_PURE_PYTHON must be 0 or 1, got 'yes'"):
        kernel.load()
