"""The timers' due table against a plain dict: whatever is set, discarded, taken or left set
while being walked, a walk yields exactly the live entries due by then, earliest first."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.cluster.shard.timers import DueTable

keys = st.tuples(st.integers(0, 3), st.integers(0, 3))
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), keys, st.integers(0, 20)),
    st.tuples(st.just("discard"), keys, st.none()),
    st.tuples(st.just("take"), st.integers(0, 3), st.none()),
    # walk to `now`, discarding the entries whose inner key is even, stopping after `limit`
    st.tuples(st.just("walk"), st.integers(0, 20), st.integers(1, 5)),
    st.tuples(st.just("compact"), st.none(), st.none())), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_table_agrees_with_a_dict(operations):
    table, model = DueTable(), {}
    for op, a, b in operations:
        if op == "set":
            table.set(*a, b)
            model[a] = b
        elif op == "discard":
            table.discard(*a)
            model.pop(a, None)
        elif op == "take":
            taken = table.take(a)
            assert taken == {i: d for (o, i), d in model.items() if o == a}
            model = {k: d for k, d in model.items() if k[0] != a}
        elif op == "walk":
            seen = []
            for due, outer, inner in table.due(a, b):
                seen.append((due, outer, inner))
                if inner % 2 == 0:
                    table.discard(outer, inner)
            expected = sorted((d, o, i) for (o, i), d in model.items() if d <= a)[:b]
            assert seen == expected
            for _, outer, inner in seen:
                if inner % 2 == 0:
                    del model[(outer, inner)]
        else:
            table.compact()
        assert len(table) == len(model)
        assert {(o, i): d for o, m in table.by.items() for i, d in m.items()} == model
    # nothing live was lost from the heap: a walk to the end yields every entry left
    assert sorted(table.due(float("inf"))) == sorted((d, o, i) for (o, i), d in model.items())


def test_a_walk_stopped_early_keeps_what_it_did_not_reach():
    table = DueTable()
    for k in range(5):
        table.set("ana", k, float(k))
    walk = table.due(10.0)
    assert next(walk) == (0.0, "ana", 0)
    walk.close()  # e.g. the caller raised
    assert [k for _, _, k in table.due(10.0)] == [0, 1, 2, 3, 4]


def test_a_key_set_again_during_a_walk_stays_due_at_its_new_time():
    table = DueTable()
    table.set(0, "ana", 5.0)
    walked = []
    for due, outer, inner in table.due(10.0):
        walked.append(due)
        if due == 5.0:
            table.set(outer, inner, 7.0)  # e.g. a wake that failed, asleep again until later
    assert walked == [5.0, 7.0]  # due by the walk's time too
    assert table.get(0, "ana") == 7.0 and list(table.due(100.0)) == [(7.0, 0, "ana")]
