"""The catalog's `timers:` section: what it accepts and the errors it gives."""
from __future__ import annotations

import pytest
import yaml

from kairos.core.catalog import default_catalog_text, load_catalog
from kairos.core.compiler import compile_catalog, default_compiled
from kairos.core.errors import CatalogError


def with_timer(spec: dict) -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc["timers"] = {"nudge": spec}
    return yaml.safe_dump(doc, sort_keys=False)


def test_default_catalog_timer_compiles():
    c = default_compiled()
    k = c.timer_names.index("cart_abandoned")
    assert c.timer_after_s[k] == 1800.0
    assert c.timer_fire[k] == c.event_index["cart_abandoned"]
    assert k in c.timers_started_by[c.event_index["add_to_cart"]]
    assert k in c.timers_cancelled_by[c.event_index["purchase"]]


def test_start_and_cancel_take_one_event_or_a_list():
    c = compile_catalog(load_catalog(with_timer(
        {"start": ["page_view", "search"], "cancel": "purchase", "after": "2h",
         "fire": "cart_abandoned"})))
    k = c.timer_names.index("nudge")
    assert k in c.timers_started_by[c.event_index["search"]]
    assert c.timer_after_s[k] == 7200.0


@pytest.mark.parametrize("spec, message", [
    ({"start": "page_view", "after": "1h", "fire": "purchase"},
     "timers.nudge.fire: a timer fires 'purchase' without attributes, but it requires "
     "order_id, amount, category, fulfilment"),
    ({"start": "cart_abandoned", "after": "1h", "fire": "cart_abandoned"},
     "timers.nudge.fire: 'cart_abandoned' also starts the timer, so it would re-arm itself "
     "forever"),
    ({"start": "page_veiw", "after": "1h", "fire": "cart_abandoned"},
     "timers.nudge.start: unknown event type 'page_veiw' (did you mean 'page_view'?)"),
    ({"start": [], "after": "1h", "fire": "cart_abandoned"}, "timers.nudge.start: must not be "
                                                              "empty"),
    ({"start": "page_view", "after": "soon", "fire": "cart_abandoned"},
     "timers.nudge.after: expected a positive duration such as 30m, 2h or 7d, got 'soon'"),
    ({"start": "page_view", "fire": "cart_abandoned"}, "timers.nudge: missing required key "
                                                       "'after'"),
])
def test_timer_errors(spec, message):
    with pytest.raises(CatalogError) as err:
        load_catalog(with_timer(spec))
    assert message in str(err.value)


def with_timers(timers: dict) -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc["events"].update({name: {"fields": {}} for name in ("nudge_a", "nudge_b", "nudge_c")})
    doc["timers"].update(timers)
    return yaml.safe_dump(doc, sort_keys=False)


def test_timers_that_arm_each_other_in_a_loop_are_refused():
    """Each fires an event that starts the next, the last's the first: a loop with no end."""
    text = with_timers({
        "first": {"start": ["add_to_cart", "nudge_c"], "after": "1h", "fire": "nudge_a"},
        "second": {"start": "nudge_a", "after": "1h", "fire": "nudge_b"},
        "third": {"start": "nudge_b", "after": "1h", "fire": "nudge_c"}})
    with pytest.raises(CatalogError) as err:
        load_catalog(text, "t.yaml")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "fire: nudge_c" in t)
    assert str(err.value) == (
        f"t.yaml:{line}:11: timers.third.fire: 'nudge_c' starts timer 'first': timers first -> "
        f"second -> third -> first arm each other, so they would fire forever")
    # taken up before this check (a saved catalog): it still loads, the refusal kept
    assert str(load_catalog(text, "t.yaml", strict=False).refusals[0]) == str(err.value)


def test_timers_that_arm_others_without_a_loop_are_accepted():
    c = compile_catalog(load_catalog(with_timers({
        "first": {"start": "add_to_cart", "after": "1h", "fire": "nudge_a"},
        "second": {"start": ["nudge_a", "add_to_cart"], "after": "1h", "fire": "nudge_b"},
        "third": {"start": ["nudge_a", "nudge_b"], "after": "1h", "fire": "nudge_c"}})))
    assert c.timers_started_by[c.event_index["nudge_a"]] == [c.timer_names.index("second"),
                                                            c.timer_names.index("third")]
