"""A catalog's timers are bounded (MAX_TIMERS): an event fires each of its customer's overdue
timers inside its request round, and the shard counts a Fire record per timer into each
event's round bytes (review rev41 d-timer, finding 1). A new catalog of more is refused with
the figure; a saved one still loads, with a warning."""
from __future__ import annotations

import logging

import pytest

from kairos.core.catalog import MAX_TIMERS, default_catalog_text, load_catalog
from kairos.core.compiler import compiled_from_text
from kairos.core.errors import CatalogError


def with_timers(n: int) -> str:
    """The default catalog with n timers in all (it has cart_abandoned)."""
    extra = "".join(f"  t{i:03d}:\n    start: add_to_cart\n    cancel: purchase\n"
                    f"    after: 30m\n    fire: cart_abandoned\n" for i in range(n - 1))
    return default_catalog_text().replace("timers:\n", "timers:\n" + extra, 1)


def test_a_new_catalog_of_more_timers_than_the_bound_is_refused_with_the_figure():
    assert MAX_TIMERS == 64
    assert len(load_catalog(with_timers(MAX_TIMERS), "new.yaml").timers) == MAX_TIMERS
    with pytest.raises(CatalogError) as exc:
        load_catalog(with_timers(MAX_TIMERS + 1), "new.yaml")
    assert exc.value.path == "timers"
    assert "more than 64 timers (65 given)" in str(exc.value)
    with pytest.raises(CatalogError):
        compiled_from_text(with_timers(MAX_TIMERS + 1), "new.yaml", strict=True)


def test_a_saved_catalog_of_more_timers_still_runs_with_a_warning(caplog):
    text = with_timers(MAX_TIMERS + 1)
    assert [e.path for e in load_catalog(text, "saved.yaml", strict=False).refusals] == \
        ["timers"]
    with caplog.at_level(logging.WARNING):
        compiled = compiled_from_text(text, "saved.yaml")
    assert len(compiled.timer_names) == MAX_TIMERS + 1
    assert "runs, though a new catalog would be refused" in caplog.text
    assert "more than 64 timers (65 given)" in caplog.text
