"""The rule language's semantics; test_twin_agreement holds the VM to them."""
from __future__ import annotations

import math

import pytest

from kairos.core.rules import (BOOL, NUM, STR, TIME, Frame, Ref, evaluate, parse)
from kairos.core.strings import StringTable

NAMES = {"x": Ref("profile", 0, NUM, name="x"), "y": Ref("profile", 1, NUM, name="y"),
         "tier": Ref("profile", 2, STR, ("none", "gold"), "tier"),
         "seen": Ref("profile", 3, TIME, name="seen"), "now": Ref("now", 0, TIME, name="now"),
         "context.device": Ref("context", 0, STR, None, "context.device")}


def run(text, profile, want=BOOL, now=1000.0):
    strings = StringTable()
    for s in ("none", "gold"):
        strings.intern(s)
    node = parse(text, NAMES.get, strings.intern, want)
    return evaluate(node, Frame(profile, [float(strings.intern("mobile"))], [], now),
                    strings.intern)


@pytest.mark.parametrize("text, expected", [
    ("x + y * 2 == 7", 1.0),  # * binds tighter than +
    ("not x > 5 and y == 2", 1.0),  # not binds looser than comparison
    ("x == 3 or y == 0 and x == 0", 1.0),  # and binds tighter than or
    ("x between 1 and 3 and y in [2, 4]", 1.0),
    ("x not in [1, 2]", 1.0),
    ("tier == 'gold'", 1.0),
    ("context.device == 'mobile'", 1.0),
    ("days_since(seen) == 1", 1.0),
    ("known(y) and not known(unset)", None),
])
def test_precedence_and_operators(text, expected):
    profile = [3.0, 2.0, 1.0, 1000.0 - 86400.0]
    if expected is None:
        with pytest.raises(ValueError, match="unknown name 'unset'"):
            run(text, profile)
    else:
        assert run(text, profile) == expected


@pytest.mark.parametrize("text", ["x < 1", "x > 1", "x == 1", "x != 1", "x in [1]",
                                  "x not in [1]", "x between 0 and 2"])
def test_comparisons_with_unknown_are_false(text):
    assert run(text, [math.nan, 0.0, 0.0, 0.0]) == 0.0
    assert run(f"not ({text})", [math.nan, 0.0, 0.0, 0.0]) == 1.0


@pytest.mark.parametrize("text, expected", [("x / 0", math.inf), ("-x / 0", -math.inf),
                                            ("coalesce(y, 5)", 5.0), ("min(x, y)", math.nan),
                                            ("log1p(0 - 2)", math.nan), ("abs(0 - x)", 3.0)])
def test_arithmetic_is_ieee(text, expected):
    got = run(text, [3.0, math.nan, 0.0, 0.0], want=NUM)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_durations_are_seconds():
    assert run("x == 2h + 30m", [9000.0, 0, 0, 0])
