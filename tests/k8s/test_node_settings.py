"""A Kairos setting is read from the environment of the container its process runs in
(cluster/settings.py reads it at import, in each process; nothing forwards it to actors), and
on KubeRay every Ray pod's `ray start` has its own: a setting that a shard or a gateway reads
must be the same on the head and on every worker group, or the shards and gateways of one
node run with other values than the rest. What they read is found in the source: the
settings (with those their defaults are made of), and the KAIROS_ variables named outright,
of every module the shard's and the gateway's actor modules import, directly or not; of the
`kairos` command's modules, only what the names taken from them use."""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from tests.k8s.test_manifests import OVERLAYS
from tests.k8s.test_operations import ray_groups
from tests.support.manifests import REPO, RUNBOOK, env_of

PACKAGE = "kairos"  # the repository's root, as installed
ROOTS = ("kairos.cluster.shard.actor", "kairos.cluster.gateway.actor")
SETTINGS = "kairos.cluster.settings"
# The `kairos` command's modules, from which a shard's or gateway's modules import a helper:
# only what those helpers use counts (cli/remote.py's plaintext_refusal reads
# KAIROS_INSECURE), not what the commands read (KAIROS_API_KEY_FILE: `kairos drain` in
# preStop).
COMMANDS = "kairos.cluster.cli."


def source(module: str) -> Path | None:
    base = REPO.joinpath(*module.split(".")[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()),
                None)


@cache
def tree_of(module: str) -> ast.Module:
    return ast.parse(source(module).read_text())


@cache
def walked(node: ast.AST) -> tuple[ast.AST, ...]:
    """Every node in `node`: walked once, for the three readers below."""
    return tuple(ast.walk(node))


@cache
def imports(module: str, node: ast.AST) -> tuple[tuple[str, str, str | None], ...]:
    """(the name bound, the repository's module, the name taken from it or None for the
    module itself) of every import in `node`, anywhere in it (a function's import runs in
    the same process)."""
    package = module if source(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for n in walked(node):
        if isinstance(n, ast.Import):
            found += [(a.asname or a.name.split(".")[0], a.name, None) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")[:len(package.split(".")) - n.level + 1]
                base = ".".join(parts + [base] if base else parts)
            found += [(a.asname or a.name, f"{base}.{a.name}", None)
                      if source(f"{base}.{a.name}") else (a.asname or a.name, base, a.name)
                      for a in n.names]
    return tuple(f for f in found if f[1].split(".")[0] == PACKAGE and source(f[1]))


def settings_named(module: str, node: ast.AST) -> set[str]:
    """settings.py's names `node` uses: imported from it, or as an attribute of the module
    (`settings.NAME`, under whatever name it is imported as, or its full dotted name)."""
    found = {name for _, target, name in imports(module, node) if target == SETTINGS and name}
    aliases = {bound for bound, target, name in imports(module, tree_of(module))
               + imports(module, node) if target == SETTINGS and name is None
               and bound != PACKAGE}
    for n in walked(node):
        if isinstance(n, ast.Attribute) and (
                isinstance(n.value, ast.Name) and n.value.id in aliases
                or ast.unparse(n.value) == SETTINGS):
            found.add(n.attr)
    return found


def variables_named(node: ast.AST) -> set[str]:
    return {n.value for n in walked(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and re.fullmatch(r"KAIROS_\w+", n.value)}


@cache
def settings_variables() -> dict[str, frozenset[str]]:
    """settings.py's names -> the environment variables their values depend on: a tunable's
    own, and those of the names its default or bounds are made of (TICK_FIRE_LIMIT defaults
    to SHARD_ROUND_LIMIT)."""
    found: dict[str, frozenset[str]] = {}
    for node in tree_of(SETTINGS).body:
        if not isinstance(node, ast.Assign):
            continue
        value = node.value
        own = {"KAIROS_" + value.args[0].value} if isinstance(value, ast.Call) and getattr(
            value.func, "id", "") in ("number", "integer", "choice", "text") else set()
        uses = {n.id for n in ast.walk(value) if isinstance(n, ast.Name) and n.id in found}
        for target in node.targets:
            if isinstance(target, ast.Name):
                found[target.id] = frozenset(own.union(*(found[u] for u in uses)))
    return found


@cache
def bindings(module: str) -> dict[str, tuple[str, str | None]]:
    """The names a module's imports bind -> (the module, the name taken from it or None)."""
    return {bound: (target, name) for bound, target, name in imports(module, tree_of(module))}


@cache
def definitions(module: str) -> dict[str, ast.AST]:
    """A module's top-level names -> what defines them."""
    found = {}
    for node in tree_of(module).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update({t.id: node for t in targets if isinstance(t, ast.Name)})
    return found


@cache
def read_by_shards_and_gateways() -> frozenset[str]:
    """The KAIROS_ variables the processes of a shard or a gateway read: what the modules
    they import read, whole, and of a command's module what the names taken from it use."""
    modules, names = list(ROOTS), []  # to read whole; (command module, name) to follow
    seen: set = set()
    variables: set[str] = set()
    settings: set[str] = set()

    def reach(target: str, name: str | None) -> None:
        if target == SETTINGS:
            settings.update([name] if name else [])  # its attributes: settings_named's
        elif not target.startswith(COMMANDS):
            modules.append(target)
        else:
            names.extend([(target, name)] if name else
                         [(target, n) for n in definitions(target)])

    def take(module: str, node: ast.AST) -> None:
        variables.update(variables_named(node))
        settings.update(settings_named(module, node))
        for _, target, name in imports(module, node):
            reach(target, name)

    while modules or names:
        item = modules.pop() if modules else names.pop()
        if item in seen:
            continue
        seen.add(item)
        if isinstance(item, str):
            take(item, tree_of(item))
            continue
        module, name = item
        node = definitions(module).get(name)
        if node is None:  # a name it imported, or none of its own (a builtin, a local)
            if name in bindings(module):
                reach(*bindings(module)[name])
            continue
        take(module, node)
        names.extend((module, n.id) for n in walked(node) if isinstance(n, ast.Name))
    table = settings_variables()
    return frozenset(variables.union(*(table[n] for n in settings if n in table)))


def test_what_shards_and_gateways_read_is_found():
    """Not vacuous: the settings the runbook names as a shard's or a gateway's are found, and
    KAIROS_INSECURE, which a helper the shard's modules take from the `kairos` command's reads
    (routed.py: cli/remote.py's plaintext_refusal); the controller's and the commands' own
    (`kairos drain`'s key file) are not."""
    found = read_by_shards_and_gateways()
    assert {"KAIROS_RESIDENT_LIMIT", "KAIROS_SHARD_QUEUE_LIMIT", "KAIROS_OPEN_STREAMS_PER_HOST",
            "KAIROS_STORE_PASSWORD_FILE", "KAIROS_TICK_S", "KAIROS_INSECURE"} <= found
    assert not {"KAIROS_AUTOSCALE_SHARD_RESIDENT", "KAIROS_AUTOSCALE_MAX_WORKERS",
                "KAIROS_DRAIN_UNREADY_S", "KAIROS_STORE", "KAIROS_API_KEY_FILE",
                "KAIROS_API_KEY"} & found


def test_a_setting_made_of_others_reads_their_variables_too():
    """A default or a bound made of another setting reads that one's variable as well."""
    table = settings_variables()
    assert table["TICK_FIRE_LIMIT"] == {"KAIROS_TICK_FIRE_LIMIT", "KAIROS_SHARD_ROUND_LIMIT"}
    assert table["RESIDENT_OVERFLOW"] == {"KAIROS_RESIDENT_OVERFLOW", "KAIROS_RESIDENT_LIMIT"}


def test_settings_are_found_under_whatever_name_they_are_imported_as():
    code = """
from kairos.cluster import settings as tuned
import kairos.cluster.settings as chosen
import kairos.cluster.settings
from kairos.cluster.settings import PASSIVATE_CHUNK as chunk
from kairos.cluster.other import settings_like
limits = tuned.TICK_S, chosen.RESIDENT_LIMIT, kairos.cluster.settings.SHARD_QUEUE_LIMIT
not_settings = settings_like.MODEL_SYNC_S
"""
    assert settings_named(ROOTS[0], ast.parse(code)) == {
        "TICK_S", "RESIDENT_LIMIT", "SHARD_QUEUE_LIMIT", "PASSIVATE_CHUNK"}


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_settings_shards_and_gateways_read_are_the_same_on_every_ray_pod(overlay):
    envs = {name: env_of(group["template"]["spec"]["containers"][0])
            for name, group in ray_groups(overlay)}
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
    text = RUNBOOK.read_text()
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
