"""A Kairos setting is read from the environment of the container its process runs in
(cluster/settings.py reads it at import, in each process; nothing forwards it to actors), and
on KubeRay every Ray pod's `ray start` has its own: a setting that a shard or a gateway reads
must be the same on the head and on every worker group, or the shards and gateways of one
node run with other values than the rest. What they read is found in the source: the
settings, and the KAIROS_ variables named outright, of every module the shard's and the
gateway's actor modules import, directly or not."""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from tests.k8s.test_manifests import OVERLAYS
from tests.support.manifests import REPO, env_of, raycluster

PACKAGE = "kairos"  # the repository's root, as installed
ROOTS = ("kairos.cluster.shard.actor", "kairos.cluster.gateway.actor")
SETTINGS = "kairos.cluster.settings"
# The `kairos` command's modules, which a shard imports for a helper: the variables they name
# (KAIROS_API_KEY_FILE, KAIROS_TLS_CA, ...) are read by a command (`kairos drain` in preStop),
# not by a shard or gateway.
COMMANDS = "kairos.cluster.cli."


def source(module: str) -> Path | None:
    base = REPO.joinpath(*module.split(".")[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()),
                None)


def imported(module: str, tree: ast.AST) -> set[str]:
    """The repository's modules `module` imports, anywhere in it (a function's import runs
    in the same process)."""
    package = module if source(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + [base] if base else parts)
            found |= {f"{base}.{a.name}" if source(f"{base}.{a.name}") else base
                      for a in node.names}
    return {m for m in found if m.split(".")[0] == PACKAGE and source(m)}


def settings_named(tree: ast.AST) -> set[str]:
    """settings.py's names a module uses: imported from it, or as `settings.NAME`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("settings"):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "settings":
            found.add(node.attr)
    return found


def tunables() -> dict[str, str]:
    """settings.py's tunables: the name in Python -> its environment variable."""
    found = {}
    for node in ast.parse(source(SETTINGS).read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", "") in ("number", "integer", "choice", "text"):
            found[node.targets[0].id] = "KAIROS_" + node.value.args[0].value
    return found


@cache
def read_by_shards_and_gateways() -> frozenset[str]:
    """The KAIROS_ variables the processes of a shard or a gateway read."""
    seen: set[str] = set()
    todo = list(ROOTS)
    variables: set[str] = set()
    names: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(source(module).read_text())
        todo += imported(module, tree)
        names |= settings_named(tree)
        if not module.startswith(COMMANDS):
            variables |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                          and isinstance(n.value, str) and re.fullmatch(r"KAIROS_\w+", n.value)}
    table = tunables()
    return frozenset(variables | {table[n] for n in names if n in table})


def test_what_shards_and_gateways_read_is_found():
    """Not vacuous: the settings the runbook names as a shard's or a gateway's are found, and
    the controller's are not."""
    found = read_by_shards_and_gateways()
    assert {"KAIROS_RESIDENT_LIMIT", "KAIROS_SHARD_QUEUE_LIMIT", "KAIROS_OPEN_STREAMS_PER_HOST",
            "KAIROS_STORE_PASSWORD_FILE", "KAIROS_TICK_S"} <= found
    assert not {"KAIROS_AUTOSCALE_SHARD_RESIDENT", "KAIROS_AUTOSCALE_MAX_WORKERS",
                "KAIROS_DRAIN_UNREADY_S", "KAIROS_STORE", "KAIROS_API_KEY_FILE"} & found


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_settings_shards_and_gateways_read_are_the_same_on_every_ray_pod(overlay):
    spec = raycluster(overlay)["spec"]
    pods = [("head", spec["headGroupSpec"])] + [(g["groupName"], g)
                                                for g in spec["workerGroupSpecs"]]
    envs = {name: env_of(group["template"]["spec"]["containers"][0]) for name, group in pods}
    read = read_by_shards_and_gateways()
    for variable in sorted(read & set().union(*envs.values())):
        values = {name: env.get(variable) for name, env in envs.items()}
        assert len({entry_key(v) for v in values.values()}) == 1, \
            f"{overlay}: {variable}, which shards or gateways read, differs by node: {values}"


def entry_key(entry: dict | None) -> str:
    return repr(sorted((entry or {}).items()))


def test_the_runbook_says_which_settings_go_on_every_ray_pod():
    """k8s/README.md's Settings by node names, as the head's alone, no setting shards or
    gateways read, and, as every node's, only such settings."""
    text = (REPO / "k8s" / "README.md").read_text()
    section = re.search(r"- \*\*Settings by node\*\*:(.*?)\n- \*\*", text, re.S)
    assert section, "k8s/README.md has no Settings by node"
    head_only, every = re.split(r"Shards and gateways run on every node", section[1])
    every = every.split("`tests/k8s/")[0]
    head_named = set(re.findall(r"`(KAIROS_\w+)`", head_only))
    every_named = set(re.findall(r"`(KAIROS_\w+)`", every))
    read = read_by_shards_and_gateways()
    assert head_named and every_named
    assert not head_named & read, f"read by shards or gateways: {head_named & read}"
    assert every_named <= read, f"not read by shards or gateways: {every_named - read}"
