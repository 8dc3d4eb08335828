"""The value's widening by the unseen mass takes the largest value read through the
candidate's bound: one convert of 1e12 on an action the candidate does not value (read as
reported) raised every value interval's upper bound from 6.5 to 4.8e11 (review rev44
d-evidence finding 5)."""
from __future__ import annotations

import pytest

from kairos.cluster.evidence import evaluation
from kairos.cluster.evidence.replay import Replayed

from tests.unit.evidence.segments import segments_log

def log(poisoned: bool) -> list[Replayed]:
    """A log that never explores: A to segment 0, B to segment 1; the candidate shows A to
    everyone and values A only (bound 100), so half its mass is unseen."""
    return segments_log(lambda rng, segment: "AB"[segment], 1.0, lambda segment: {"A": 1.0},
                        value=lambda i, accepted: 1e12 if poisoned and i == 1 else accepted * 10,
                        value_bound=lambda logged: 100.0 if logged == "A" else float("nan"))


def test_a_value_read_as_reported_does_not_set_the_widening():
    honest, poisoned = (evaluation.evaluate(log(p)) for p in (False, True))
    assert honest["overlap"]["unseen_mass"] > 0.4  # the widening is at work
    for name, e in poisoned["estimates"]["value"].items():
        assert e["high"] == honest["estimates"]["value"][name]["high"] < 10.0, (name, e)
    assert any("read as reported" in w for w in poisoned["warnings"])


def test_without_a_bounded_value_the_largest_of_all_sets_it():
    rows = [Replayed(f"d{i}", "v1", "web", "hero", "B", 1.0, 1.0, 5.0 + i % 2, {}, {"A": 1.0},
                     customer=f"c{i}") for i in range(100)]
    evidence = evaluation.evaluate(rows)
    unseen = evidence["overlap"]["unseen_mass"]
    assert unseen > 0.9  # the log never showed A (less the slack of 100 decisions)
    assert evidence["estimates"]["value"]["ips"]["high"] == pytest.approx(6.0 * unseen)
