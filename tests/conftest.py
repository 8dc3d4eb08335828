"""Shared fixtures, the test tiers, and the test session's isolation from a running Kairos.

Isolation: the session never reads RAY_ADDRESS or the user's KAIROS_* settings, keeps Ray's
session files and address file in a temp dir of its own (RAY_TMPDIR) and `kairos` commands'
records in another (KAIROS_HOME), so a `kairos up` the user is running, or a Ray of theirs, is
neither joined nor disturbed. Every Ray a test starts comes from the `ray_cluster` fixture: its
own GCS on a free port, no dashboard, no fixed agent port.

Tiers, one folder each, run in this order: `unit/` (no Ray, quick), `property/` (randomised
equivalence against a twin: the kernel's NumPy twin, a shard that never crashed; no Ray), `cluster/` (starts Ray clusters on this machine),
`console/` (the agent's console in Chromium against a `kairos up` of its own), `bench/` (the
harnesses' quick modes, end to end). `-m unit` (or any tier's name) picks one. With workers
(pytest-xdist's `-n`, on by default), one runs the Ray tiers and the others the rest (ByTier),
the modules of the Ray tiers that start no Ray included (RAY_FREE).
Tests of the unit and property tiers cannot start Ray: `ray.init` and Ray's node start-up
raise while their fixtures and bodies run (see `pytest_runtest_protocol`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from xdist.scheduler import LoadScopeScheduling

from kairos.cluster.cli.local import single_machine
from kairos.cluster.raytuning import RAY_SETTINGS, own_token
from kairos.core import kernel
from kairos.core.catalog import default_catalog_text, load_catalog_file
from kairos.core.compiler import CompiledCatalog, compile_catalog, default_compiled

from tests.support.ray_nodes import started

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "unit" / "core" / "data"
ROOT = TESTS.parent

# -- the session's environment -------------------------------------------------------------------
# Set when this file is imported, before any test module imports Ray or kairos.cluster.settings.
_KEEP = {kernel.PURE_ENV}  # a user may run the whole suite on the NumPy twin
for _name in [n for n in os.environ if n.startswith("KAIROS_") and n not in _KEEP]:
    del os.environ[_name]
for _name in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_TMPDIR", "RAY_AUTH_MODE",
              "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(_name, None)
own_token()  # the session's Ray never writes a token into the user's ~/.ray
# short paths: Ray's sockets live under RAY_TMPDIR and a socket path is at most 107 bytes
_PRIVATE = [tempfile.mkdtemp(prefix="kairos-ray-"), tempfile.mkdtemp(prefix="kairos-home-")]
os.environ["RAY_TMPDIR"], os.environ["KAIROS_HOME"] = _PRIVATE
# Servers in tests bind 127.0.0.1 only: the shards' data path too (Ray's workers inherit this)
os.environ["KAIROS_DATA_HOST"] = "127.0.0.1"


def pytest_sessionfinish(session, exitstatus) -> None:
    for path in _PRIVATE:
        shutil.rmtree(path, ignore_errors=True)


# -- tiers ---------------------------------------------------------------------------------------
TIERS = ("unit", "k8s", "property", "cluster", "console", "bench")
NO_RAY = frozenset({"unit", "k8s", "property"})
_TIER = pytest.StashKey[str]()


def tier_of(item: pytest.Item) -> str:
    """The tier folder a test lives in (tests/<tier>/...)."""
    try:
        folder = item.path.relative_to(TESTS).parts[0]
    except ValueError:  # not under tests/
        folder = ""
    if folder not in TIERS:
        raise pytest.UsageError(f"{item.nodeid} is in no tier: tests live in tests/<tier>/ "
                                f"for a tier of {', '.join(TIERS)}")
    return folder


def pytest_collection_modifyitems(session, config, items: list[pytest.Item]) -> None:
    """Each test gets its tier's marker (`-m unit`, `-m "not bench"`), and the tiers run in
    order: unit, k8s, property, cluster, console, bench (a stable sort: within a tier,
    collection order); with more than one worker, in the order of RAY_FIRST (ByTier)."""
    for item in items:
        tier = tier_of(item)
        item.add_marker(tier)
        item.stash[_TIER] = tier
    shared = getattr(config, "workerinput", {}).get("workercount", 1) > 1
    order = RAY_FIRST if shared else TIERS
    items.sort(key=lambda item: order.index(item.stash[_TIER]))


# With workers (pytest-xdist, -n): the Ray tiers first, so that one worker starts on them
RAY_FIRST = ("cluster", "console", "bench", "unit", "k8s", "property")
# Modules of the Ray tiers that start no Ray, in their tests or in the harnesses they run
# (which import none): the other workers share them as they share the unit tier's modules,
# off the one worker the Ray tests queue on, which sets the suite's time. Starting Ray in
# their tests raises as it does in the unit tier.
RAY_FREE = frozenset(f"tests/bench/{name}.py" for name in (
    "test_bench_costs", "test_bench_coverage", "test_bench_decision_log", "test_bench_flood",
    "test_bench_kernel", "test_bench_learning", "test_bench_recovery", "test_loadgen_stall",
    "test_loadgen_traffic"))


def _ray_free(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0] in RAY_FREE


class ByTier(LoadScopeScheduling):
    """pytest-xdist's scheduling by scope, the scopes being: the Ray tiers, all of them as one,
    which one worker runs in order from the start (two Ray clusters never run at once), and
    each module of the other tiers and of RAY_FREE, which the other workers share (a module's
    fixtures set up once)."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        parts = Path(module).parts
        tier = parts[parts.index("tests") + 1] if "tests" in parts[:-1] else ""
        return module if tier in NO_RAY or _ray_free(nodeid) else "ray"


def pytest_xdist_make_scheduler(config, log) -> ByTier:
    return ByTier(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    """The unit tier's guard (as Ray Serve's unit tests forbid ray.init): around the whole
    protocol of a test of the tiers without Ray or of RAY_FREE, its module- and session-scoped
    fixtures included (a function-scoped autouse fixture would come after those), starting
    Ray raises; in a RAY_FREE test, in the processes it starts as well."""
    children = _ray_free(item.nodeid)  # a harness run as a process of its own too
    if item.stash.get(_TIER, "unit") not in NO_RAY and not children:
        yield
        return
    with _ray_forbidden(item.nodeid, children):
        yield


# Ray's temp dir for the processes a RAY_FREE test starts: none can be made there, so a Ray
# any of them starts fails at once, naming it (unless given a temp dir of its own: none is)
NO_RAY_TMPDIR = "/proc/kairos-ray-free-module-must-not-start-ray"


@contextlib.contextmanager
def _ray_forbidden(nodeid: str, children: bool = False) -> Iterator[None]:
    import ray
    import ray._private.node
    import ray._private.worker

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{nodeid} must not start Ray (its tier, or RAY_FREE in "
                           f"tests/conftest.py): move it to tests/cluster/ (and use the "
                           f"`ray_cluster` fixture), or its module out of RAY_FREE")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "init", refuse)
        patch.setattr(ray._private.worker, "init", refuse)
        patch.setattr(ray._private.node.Node, "__init__", refuse)
        if children:
            patch.setenv("RAY_TMPDIR", NO_RAY_TMPDIR)
        yield


# -- Ray -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def tuned(overrides: dict[str, str]) -> Iterator[None]:
    """Environment overrides (KAIROS_* tunables, Ray's) for as long as the block runs: the Ray
    processes started inside it inherit them. Put back afterwards."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def local_ray(nodes: int = 1, env: dict[str, str] | None = None, *, cpus_per_node: int = 1,
              object_store_mb: int = 128, namespace: str = "kairos") -> Iterator[Any]:
    """A Ray cluster of `nodes` nodes on this machine (ray.cluster_utils.Cluster), this
    process connected to it as the driver: its GCS on a free port, no dashboard, the agents on
    free ports, its files under the session's RAY_TMPDIR. `env` is set while it runs (its
    processes inherit it), over the Ray settings every Kairos Ray runs with (raytuning.py).
    The Cluster, for tests that add or remove nodes. One node runs on loopback only
    (cluster/cli/local.py; it takes no other node); Ray's clusters of several nodes need the
    machine's address."""
    import ray

    node_args = {"num_cpus": cpus_per_node, "object_store_memory": object_store_mb * 2**20,
                 "dashboard_agent_listen_port": 0}
    with tuned({**RAY_SETTINGS, **(env or {})}), \
            (single_machine() if nodes == 1 else contextlib.nullcontext()):
        cluster = _started(nodes, node_args)
        try:
            ray.init(address=cluster.address, namespace=namespace)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def _started(nodes: int, node_args: dict[str, Any]) -> Any:
    """A Cluster of `nodes` nodes, started again (once) when a node's start times out."""
    from ray.cluster_utils import Cluster

    def start() -> Any:
        cluster = Cluster()
        try:
            cluster.add_node(**node_args, include_dashboard=False)  # the first is the head
            for _ in range(nodes - 1):
                cluster.add_node(**node_args)
            cluster.wait_for_nodes()
            return cluster
        except BaseException:
            cluster.shutdown()
            raise
    return started(start)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Callable[..., Any]]:
    """`ray_cluster(nodes=1, env=None, cpus_per_node=1, object_store_mb=128)` starts a Ray
    cluster for the module (see local_ray) and returns its Cluster; it is shut down after the
    module's last test, after the fixtures that use it. One per module."""
    with contextlib.ExitStack() as stack:
        started = []

        def start(nodes: int = 1, env: dict[str, str] | None = None, **kwargs) -> Any:
            assert not started, "one Ray cluster per module"
            started.append(stack.enter_context(local_ray(nodes, env, **kwargs)))
            return started[0]
        yield start


# -- the gateway's deadline ------------------------------------------------------------------------

@pytest.fixture
def roomy_answer_margin(monkeypatch) -> float:
    """The in-process gateway stops waiting for a shard 0.25 s before its caller's deadline, not
    5 % of it: a test that wants the fallback within a short deadline is otherwise at the mercy
    of a loaded machine (a CI run's gateway loop, 15 ms late, turned 0.3 s's fallback into
    DEADLINE_EXCEEDED). Use a deadline of at least twice the margin."""
    from kairos.cluster.gateway import calls
    monkeypatch.setattr(calls, "DEADLINE_MARGIN_S", 0.25)
    return 0.25


# -- catalogs, kernels, benchmarks ---------------------------------------------------------------

@pytest.fixture(params=["cython", "reference"])
def impl(request, monkeypatch) -> str:
    """Selects the kernel through the environment variable users set, as msgpack's CI does."""
    monkeypatch.setenv(kernel.PURE_ENV, "1" if request.param == "reference" else "0")
    assert kernel.load().IMPLEMENTATION == request.param
    return request.param


@pytest.fixture
def default_yaml(tmp_path) -> Path:
    """The default catalog as a file, as a user would write one."""
    path = tmp_path / "default.yaml"
    path.write_text(default_catalog_text())
    return path


@pytest.fixture(scope="module")
def compiled() -> CompiledCatalog:
    """The default catalog, compiled (once per process: its own string table per module)."""
    return default_compiled()


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
