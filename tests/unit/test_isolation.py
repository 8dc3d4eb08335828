"""The test session's isolation from a Kairos or Ray the user runs, and the unit tier's guard
(tests/conftest.py)."""
from __future__ import annotations

import os
import tempfile

import pytest


def test_the_session_has_ray_files_and_kairos_records_of_its_own():
    assert "RAY_ADDRESS" not in os.environ
    for name in ("RAY_TMPDIR", "KAIROS_HOME"):
        assert os.path.dirname(os.environ[name]) == tempfile.gettempdir()
        assert os.path.basename(os.environ[name]).startswith(("kairos-ray-", "kairos-home-"))


def test_a_unit_test_cannot_start_ray():
    import ray
    from ray.cluster_utils import Cluster
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init()
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init(address="local", num_cpus=1)
    with pytest.raises(RuntimeError, match="must not start Ray"):
        Cluster(initialize_head=True)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def module_ray():
    import ray
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init()
    return "refused"


def test_nor_can_its_module_fixtures(module_ray):
    assert module_ray == "refused"



def test_the_sessions_ray_has_a_token_of_its_own_in_the_environment():
    """A local ray.init() with RAY_AUTH_MODE unset writes ~/.ray/auth_token readable by
    others (Ray 2.60), which a later `kairos up` refuses: the session's Ray takes a token
    from the environment, never from or into the user's home (raytuning.own_token)."""
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert len(os.environ["RAY_AUTH_TOKEN"]) == 64
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ


def test_the_ray_tiers_modules_that_start_no_ray_are_shared_out_and_guarded():
    """Off the one worker the Ray tests queue on, to any worker, as the unit tier's modules;
    under the same guard (a module listed that no longer exists would silently go back)."""
    import tests.conftest as conftest
    assert all((conftest.ROOT / module).is_file() for module in conftest.RAY_FREE)
    split = conftest.ByTier._split_scope
    assert split(None, "tests/bench/test_bench_kernel.py::test_quick_run") == \
        "tests/bench/test_bench_kernel.py"
    assert split(None, "tests/unit/test_isolation.py::test_x") == "tests/unit/test_isolation.py"
    assert split(None, "tests/bench/test_bench_load.py::test_smoke_run") == "ray"
    assert split(None, "tests/cluster/test_runtime.py::test_x") == "ray"
    assert conftest._ray_free("tests/bench/test_loadgen_stall.py::test_a[stalled_run]")


def test_a_ray_free_modules_harness_cannot_start_ray_either():
    """The bench harnesses those modules run are processes of their own: a Ray one starts
    fails at once, naming why, as one started by the test itself raises."""
    import subprocess
    import sys

    import tests.conftest as conftest
    with conftest._ray_forbidden("tests/bench/test_bench_kernel.py::t", children=True):
        done = subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=1)"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and conftest.NO_RAY_TMPDIR in done.stderr, done.stderr[-2000:]
    assert os.path.basename(os.environ["RAY_TMPDIR"]).startswith("kairos-ray-")  # put back
