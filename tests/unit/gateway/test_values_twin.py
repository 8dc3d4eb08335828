"""`values_in` takes the plain values (numbers, bools, strings within the bound) as they are
and leaves every other to `value_in`, naming the field only then (wire.py): it must answer as
`value_in` of each value would, the same values or the same first error, so that a check
added to `value_in` cannot miss the values `values_in` takes itself."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.cluster.gateway import wire
from kairos.core.errors import InputError
from kairos.core.request import MAX_STRING_LENGTH
from kairos.v1 import decision_pb2 as pb

STRINGS = st.one_of(st.text(max_size=8),
                    st.integers(MAX_STRING_LENGTH - 1, MAX_STRING_LENGTH + 1)
                    .map(lambda n: "é" * n))
VALUES = st.one_of(
    st.just(pb.Value()),
    STRINGS.map(lambda s: pb.Value(string_value=s)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: pb.Value(number_value=x)),
    st.integers(-2**63, 2**63 - 1).map(lambda i: pb.Value(int_value=i)),
    st.booleans().map(lambda b: pb.Value(bool_value=b)),
    st.tuples(st.integers(-2**40, 2**40), st.integers(-5, 1_000_000_005)).map(
        lambda t: pb.Value(timestamp_value={"seconds": t[0], "nanos": t[1]})))


def _each(where: str, values) -> dict:
    return {name: wire.value_in(f"{where}.{name}", values[name]) for name in values}


def _answer(read, where: str, values):
    try:
        return "ok", read(where, values)
    except InputError as exc:
        return "error", (exc.field, exc.reason)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=4), VALUES, max_size=6))
def test_values_in_answers_as_value_in_of_each(values):
    request = pb.DecideRequest(context=values)
    got = _answer(wire.values_in, "context", request.context)
    want = _answer(_each, "context", request.context)
    assert got[0] == want[0]
    if got[0] == "error":
        assert got[1] == want[1]
    else:
        assert got[1].keys() == want[1].keys()
        assert all(repr(got[1][k]) == repr(want[1][k]) for k in want[1])  # NaN == NaN here


def test_a_value_without_a_kind_is_named_with_its_field():
    request = pb.DecideRequest(context={"device": pb.Value()})
    with pytest.raises(InputError, match="the value has no kind set") as raised:
        wire.values_in("context", request.context)
    assert raised.value.field == "context.device"
