"""What the compiled kernel indexes unchecked (boundscheck off) is bounded before it gets there
(issue 18): a ring head outside the ring writes entry 0, never past the row; a published model
table must fit the catalog (and a model view's arrays each other) before it is taken; a rule's
evaluation stack is the kernel's own size, not a copy of it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from kairos.core import _kernel, kernel, rules
from kairos.core.compiler import compiled_from_text, default_compiled
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError
from kairos.core.models import COUNTS

ROOT = Path(__file__).resolve().parents[3]
DATA = Path(__file__).parent / "data"
T0 = 1_800_000_000.0


def record_at_head(head: int) -> None:
    """Two customers, the first's ring head set to `head`; one impression recorded for it.
    Prints where it landed, the head after, and whether the second's ring is untouched."""
    c = default_compiled()
    e = DecisionEngine(c)
    first, second = e.activate(["a", "b"]).tolist()
    assert second == first + 1  # the row a head of history_size would write into
    e.table.ring_head[first] = head
    action = 0
    channel = c.channel_names[int(np.flatnonzero(c.offered[action])[0])]
    e.record_outcomes([("a", c.action_ids[action], channel, "impression", T0, None)])
    print(int(e.table.ring_action[first, 0]), int(e.table.ring_head[first]),
          bool((e.table.ring_action[second] == -1).all()))


@pytest.mark.parametrize("pure", ["0", "1"])  # the kernel and its NumPy twin
@pytest.mark.parametrize("head", [-2**31, -1, "history_size", 2**31 - 1])
def test_a_ring_head_outside_the_ring_records_at_entry_0(head, pure):
    """In a process of its own: without the bound, -2**31 writes 4 GiB before the ring (a
    crash), history_size the next customer's ring (the twin: an IndexError, and -1 the
    ring's last entry)."""
    head = default_compiled().history_size if head == "history_size" else head
    done = subprocess.run(
        [sys.executable, "-c", f"from {__name__} import record_at_head; record_at_head({head})"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, kernel.PURE_ENV: pure})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1", "True"]


def published(models, count: int, **changes) -> SimpleNamespace:
    """The engine's table as a learner would publish it, its per-model arrays cut to `count`
    models."""
    stats = {name: getattr(models, name)[:count].copy() for name in ("mean", "precision",
                                                                     *COUNTS)}
    return SimpleNamespace(**{**stats, "inputs": models.inputs.copy(), "rows": None,
                              "version": models.version + 1, "incarnation": "learner-x",
                              **changes})


def test_a_published_table_of_fewer_models_than_the_catalog_is_refused(impl):
    e = DecisionEngine(default_compiled())
    before = e.models.mean.copy()
    with pytest.raises(ValueError, match=f"do not fit the catalog's {len(before)} models"):
        e.adopt_models(published(e.models, 1))
    with pytest.raises(ValueError, match="mean, precision, positives"):
        e.models.adopting(published(e.models, len(before) - 1))
    assert e.models.version == 0 and np.array_equal(e.models.mean, before)
    e.adopt_models(published(e.models, len(before)))  # the catalog's shapes: taken
    assert e.models.version == 1


def test_published_rows_must_be_the_catalogs_models(impl):
    e = DecisionEngine(default_compiled())
    m = e.models
    rows = np.array([0, len(m.mean)])
    with pytest.raises(ValueError, match="rows do not fit"):
        e.adopt_models(published(m, 2, rows=rows))
    with pytest.raises(ValueError, match="inputs do not fit"):
        e.adopt_models(published(m, 2, rows=np.array([0, 1]), inputs=m.inputs[:, :-1]))
    assert m.version == 0


VIEW = ("mean", "precision", "positives", "negatives", "value_count", "value_sum", "inputs",
        "inputs_added", "input_clips", "covariance")  # ModelView's arguments, in order


@pytest.mark.parametrize("name", ["precision", "covariance", "positives", "inputs",
                                  "input_clips"])
def test_a_model_view_of_arrays_that_disagree_is_refused(name):
    arrays = dict(zip(VIEW, DecisionEngine(default_compiled()).models.kernel_arrays()))
    assert arrays["covariance"] is not None  # the default catalog's posterior is full
    _kernel.ModelView(**arrays)
    one_short = arrays[name][:1] if name in ("precision", "covariance", "positives") \
        else arrays[name][:, :-1]
    with pytest.raises(ValueError, match="model arrays of shape"):
        _kernel.ModelView(**{**arrays, name: one_short})


@pytest.mark.parametrize("change", ["float32", "other_kind"])
def test_a_published_table_of_other_types_or_posterior_is_refused_before_it_changes(impl,
                                                                                    change):
    """float32 statistics fit the shapes but not the kernels' bind, which refused them after
    the table had taken them; a diagonal posterior's precisions ((n, d)) for a full one's
    ((n, d, d)) are of another kind."""
    e = DecisionEngine(default_compiled())
    m = e.models
    assert m.full  # the default catalog's posterior
    whole = published(m, len(m.mean))
    if change == "float32":
        whole.mean = whole.mean.astype(np.float32)
    else:
        whole.precision = np.diagonal(whole.precision, axis1=1, axis2=2).copy()
    view, mean = e.model_view, m.mean
    for adopt in (e.adopt_models, m.adopting):
        with pytest.raises(ValueError, match="mean do not fit" if change == "float32"
                           else "precision do not fit"):
            adopt(whole)
    assert (m.version, m.mean.dtype) == (0, np.float64)
    assert e.model_view is view and m.mean is mean


def nested_value(depth: int) -> str:
    """A value rule that holds `depth` values at once: 1 + (1 + (... 1))."""
    doc = yaml.safe_load((DATA / "small.yaml").read_text())
    doc["actions"][4]["value"] = "1 + (" * (depth - 1) + "1" + ")" * (depth - 1)
    doc["actions"][4]["applicability"] = "true"
    return yaml.safe_dump(doc)


def test_a_rule_holding_the_most_values_runs_on_both_kernels_and_one_more_is_refused(impl):
    c = compiled_from_text(nested_value(rules.MAX_STACK))
    d = DecisionEngine(c).decide("c", "web", "sidebar", now=T0, explain=True)
    assert [(a.action_id, a.value) for a in d.actions] == [("track_order", rules.MAX_STACK)]
    with pytest.raises(CatalogError, match=f"holds {rules.MAX_STACK + 1} values at once"):
        compiled_from_text(nested_value(rules.MAX_STACK + 1))
