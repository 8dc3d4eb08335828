"""Hostile catalog text: every problem is a CatalogError that says where, found quickly."""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kairos.core import catalog as catalog_module
from kairos.core import yamlsource
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.errors import CatalogError
from kairos.core import rules

MAX_RULE_DEPTH = getattr(rules, "MAX_RULE_DEPTH", 64)
MAX_RULE_LENGTH = getattr(rules, "MAX_RULE_LENGTH", 4096)
MAX_CATALOG_BYTES = getattr(yamlsource, "MAX_CATALOG_BYTES", 4 * 1024 * 1024)

DATA = Path(__file__).parent / "data"
SMALL = (DATA / "small.yaml").read_text(encoding="utf-8")
APPLY = '    applicability: "late_deliveries >= 1"\n'  # actions[3], line 92; the rule at col 21


def edit(old: str, new: str, text: str = SMALL) -> str:
    assert text.count(old) == 1
    return text.replace(old, new, 1)


def error_of(text: str, source: str = "small.yaml") -> CatalogError:
    with pytest.raises(CatalogError) as exc:
        compile_catalog(load_catalog(text, source))
    return exc.value


# ---------------------------------------------------------------------------------------------
# Characters YAML refuses


@pytest.mark.parametrize("char, name", [
    ("\x00", "#x0000 (NUL)"),
    ("\x07", "#x0007 (BEL)"),
    ("\x1b", "#x001b (ESC)"),
    ("\x7f", "#x007f (DEL)"),
    ("\ufffe", "#xfffe"),
    ("\ud800", "#xd800"),
])
def test_unacceptable_characters_are_catalog_errors(char, name):
    text = "kairos_catalog: 1\nname: x\nversion: ab" + "cd" + char + "ef\n"
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "<PutCatalog>")
    err = exc.value
    assert (err.source, err.line, err.column) == ("<PutCatalog>", 3, 14)
    assert str(err).startswith(f"<PutCatalog>:3:14: unacceptable character {name}")


def test_nul_byte_message_names_the_place():
    text = "kairos_catalog: 1\nname: x\nversio\x00n: 1\n"
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "<PutCatalog>")
    assert str(exc.value) == "<PutCatalog>:3:7: unacceptable character #x0000 (NUL)"


def test_unacceptable_character_after_crlf_lines():
    text = "a: 1\r\nb: 2\r\n  \x00"
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "<PutCatalog>")
    assert (exc.value.line, exc.value.column) == (3, 3)


# ---------------------------------------------------------------------------------------------
# Anchors and aliases

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("text", ["a: &a [*a, *a]\n", "a: &a {b: *a}\n",
                                  "? &k [*k]\n: 1\n"], ids=["list", "mapping", "key"])
def test_an_alias_inside_what_it_names_is_refused(text):
    """Found by the contract fuzzer: ValidateCatalog of `a: &a [*a]` answered UNKNOWN
    (RecursionError) — the alias expands forever."""
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "<PutCatalog>")
    assert str(exc.value).startswith("<PutCatalog>:1:")


def test_billion_laughs_is_refused():
    """Aliases may repeat what an anchor names (generated YAML uses them for shared lists),
    but what they expand to is bounded: the refusal comes at the bound, long before the
    expansion (10^9 values) could be built."""
    with pytest.raises(CatalogError) as exc:
        load_catalog(BILLION_LAUGHS, "<PutCatalog>")
    assert "aliases repeat more than 50000 values" in str(exc.value)
    assert str(exc.value).startswith("<PutCatalog>:")


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def test_aliases_that_repeat_a_little_are_read_as_the_values_they_name():
    doc = yaml.safe_load(SMALL)
    doc["actions"][1]["contact_policy"] = doc["actions"][0]["contact_policy"]
    text = yaml.safe_dump(doc, sort_keys=False)  # writes an anchor and an alias
    assert "&id" in text and "*id" in text
    aliased = compile_catalog(load_catalog(text, "generated.yaml"))
    doc = yaml.safe_load(text)  # the same document, every value written out
    written_out = compile_catalog(load_catalog(yaml.dump(doc, Dumper=_NoAliases), "out.yaml"))
    assert aliased.version == written_out.version
    assert aliased.catalog.actions[1] == written_out.catalog.actions[1]


def test_ampersand_and_star_inside_strings_are_fine():
    text = edit('    applicability: "late_deliveries >= 1"\n',
                '    applicability: "late_deliveries >= 1"\n    description: "&x and *y"\n')
    compile_catalog(load_catalog(text, "small.yaml"))


def test_bundled_and_test_catalogs_load():
    for path in [*(Path(catalog_module.__file__).parent / "catalogs").glob("*.yaml"),
                 *DATA.glob("*.yaml")]:
        load_catalog(path.read_text(encoding="utf-8"), str(path))


# ---------------------------------------------------------------------------------------------
# Rules: depth and length


def rule(text: str) -> str:
    return edit(APPLY, f'    applicability: "{text}"\n')


def where(column: int = 21) -> str:
    return f"small.yaml:92:{column}: actions[3].applicability (action 'delivery_apology'): "


@pytest.mark.parametrize("text", [
    pytest.param("(" * 10_000 + "late_deliveries >= 1" + ")" * 10_000, id="parens"),
    pytest.param("not " * 10_000 + "late_deliveries >= 1", id="not"),
    pytest.param("- " * 10_000 + "late_deliveries >= 1", id="minus"),
    pytest.param("max(" * 10_000 + "1" + ", 1)" * 10_000 + " > 1", id="calls"),
])
def test_huge_rules_are_refused_by_length(text):
    err = error_of(rule(text))
    assert err.action_id == "delivery_apology"
    assert err.path == "actions[3].applicability"
    assert str(err) == where() + (f"the rule is {len(text)} characters long, more than the "
                                  f"{MAX_RULE_LENGTH} allowed")


@pytest.mark.parametrize("text", [
    pytest.param("(" * 1000 + "late_deliveries >= 1" + ")" * 1000, id="parens"),
    pytest.param("not " * 1000 + "late_deliveries >= 1", id="not"),
    pytest.param("- " * 1000 + "late_deliveries >= 1", id="minus"),
    pytest.param("max(" * 500 + "1" + ", 1)" * 500 + " > 1", id="calls"),
    pytest.param("1" + " + 1" * 1000 + " > 1", id="long-chain"),
    pytest.param("late_deliveries >= 1" + " and late_deliveries >= 1" * 150, id="and-chain"),
])
def test_deep_rules_are_refused_by_depth(text):
    assert len(text) <= MAX_RULE_LENGTH
    err = error_of(rule(text))
    assert err.action_id == "delivery_apology"
    assert err.path == "actions[3].applicability"
    assert err.reason == f"the rule is nested too deeply (more than {MAX_RULE_DEPTH} levels)"
    assert err.line == 92


def test_rules_within_the_limits_compile():
    depth = MAX_RULE_DEPTH - 2
    compile_catalog(load_catalog(rule("(" * depth + "late_deliveries >= 1" + ")" * depth),
                                 "small.yaml"))
    compile_catalog(load_catalog(rule("not " * (depth - 1) + "late_deliveries >= 1"),
                                 "small.yaml"))
    compile_catalog(load_catalog(rule(" and ".join(["late_deliveries >= 1"] * 20)),
                                 "small.yaml"))


def aliased(actions: int, text: str) -> str:
    """A catalog whose actions all run one rule, written once and repeated by YAML aliases."""
    same = "eligibility: *r, applicability: *r, suitability: *r"
    return "".join([
        'kairos_catalog: 1\nname: t\nversion: "1"\n',
        "channels: {web: {placements: {hero: {top_k: 1}}}}\n",
        "events: {buy: {fields: {}}}\nfeatures: {orders: {kind: count, event: buy}}\n",
        "fallbacks: {web: []}\nactions:\n",
        "  - {id: a0, group: g, purpose: service, channels: {web: {treatment: t}}, value: 1,\n",
        f'     eligibility: &r "{text}", applicability: *r, suitability: *r}}\n',
        *(f"  - {{id: a{i}, group: g, purpose: service, channels: {{web: {{treatment: t}}}}, "
          f"value: 1, {same}}}\n" for i in range(1, actions))])


def test_a_rule_text_is_parsed_once_per_compile(monkeypatch):
    """Aliases let a short text repeat a long rule thousands of times: it is parsed once."""
    parse, calls = rules.parse, []
    monkeypatch.setattr(rules, "parse", lambda *args: calls.append(args[0]) or parse(*args))
    compiled = compile_catalog(load_catalog(aliased(50, "orders in [1, 2, 3]")))
    assert calls == ["orders in [1, 2, 3]"]
    assert compiled.rule_ast[49][2] is compiled.rule_ast[0][0]
    assert len({tuple(compiled.rule_range[a, s]) for a in range(50) for s in range(3)}) == 150


def balanced(depth: int) -> str:
    return "orders > 1" if depth == 0 else f"({balanced(depth - 1)} or {balanced(depth - 1)})"


@pytest.mark.parametrize("text, limit, what", [
    pytest.param("orders in [" + ",".join(["1"] * 2000) + "]", "MAX_CATALOG_LIST_ITEMS",
                 "list items", id="list-items"),
    pytest.param(balanced(7), "MAX_CATALOG_RULE_NODES", "syntax-tree nodes", id="nodes"),
])
def test_the_rules_of_a_catalog_are_bounded_in_all(text, limit, what):
    """Counted once for each action that runs them: the code emitted and run grows so."""
    assert len(text) <= MAX_RULE_LENGTH
    nodes, items = rules.size(compile_catalog(load_catalog(aliased(1, text))).rule_ast[0][0])
    cap = getattr(rules, limit)
    action, stage = divmod(cap // (items if what == "list items" else nodes), 3)  # past it
    err = error_of(aliased(action + 1, text), "t.yaml")
    stage_name = ("eligibility", "applicability", "suitability")[stage]
    assert str(err) == (f"t.yaml:10:19: actions[{action}].{stage_name} (action 'a{action}'): "
                        f"the catalog's rules hold more than {cap:,} {what} in all, counting a "
                        f"rule once for each action that uses it")
    compile_catalog(load_catalog(aliased(action, text)))  # within the bound


# ---------------------------------------------------------------------------------------------
# Catalog size and action count


def test_catalog_text_size_is_bounded():
    text = SMALL + "#" + "x" * MAX_CATALOG_BYTES + "\n"
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "<PutCatalog>")
    assert str(exc.value) == (f"<PutCatalog>: the catalog is {len(text.encode())} bytes, more "
                              f"than the {MAX_CATALOG_BYTES} allowed")


def test_catalog_size_counts_utf8_bytes():
    limit = MAX_CATALOG_BYTES
    text = SMALL + "#" + "é" * ((limit - len(SMALL.encode())) // 2 + 1) + "\n"
    assert len(text) < limit < len(text.encode())
    with pytest.raises(CatalogError, match="bytes, more than"):
        load_catalog(text, "<PutCatalog>")


def test_action_count_is_bounded(monkeypatch):
    monkeypatch.setattr(catalog_module, "MAX_ACTIONS", 3, raising=False)
    err = error_of(SMALL)
    assert err.path == "actions"
    assert err.reason.startswith("more than 3 actions (")
    assert err.reason.endswith(" given)")


def test_default_action_limit():
    assert catalog_module.MAX_ACTIONS == 10_000


# ---------------------------------------------------------------------------------------------
# The gateway compiles off its event loop


def test_admin_compiles_off_the_event_loop(monkeypatch):
    """In a process of its own (cluster/gateway/compiling.py): none of it in the gateway's."""
    pytest.importorskip("grpc")
    from kairos.cluster.gateway import admin, compiling

    here = []
    monkeypatch.setattr(compiling, "compiled_from_text", lambda *args: here.append(args))

    class Context:
        async def abort(self, code, details):
            raise RuntimeError((code, details))

        def time_remaining(self):  # no deadline
            return None

    async def main():
        service = admin.AdminService(SimpleNamespace(backend=None, node=None))
        with pytest.raises(RuntimeError) as exc:
            await service._compile("x: 1", Context())
        return exc.value.args[0]

    code, details = asyncio.run(main())
    assert not here
    assert code.name == "INVALID_ARGUMENT"
    assert details.startswith("<PutCatalog>")


# ---------------------------------------------------------------------------------------------
# YAML nesting (the composer recurses)


@pytest.mark.parametrize("text", ["a: " + "[" * 100_000, "a: " + "{b: " * 100_000])
def test_deeply_nested_yaml_is_a_catalog_error(text):
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "<PutCatalog>")
    assert exc.value.reason == "mappings and lists are nested too deeply (more than 64 levels)"
    assert exc.value.line == 1
