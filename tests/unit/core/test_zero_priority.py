"""A priority of 0 switches an action off: an action with `lever: 0`, or under a context weight
of 0, is never shown, even at the default restraint threshold of 0 (which a priority of 0
reaches), in the decision's own selection and in the re-runs its selection probabilities
come from."""
from __future__ import annotations

import pytest
import yaml

from kairos.core import kernel
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0
SAMPLES = 32


ACTIONS = {"off": {"group": "a", "lever": 0}, "weighted": {"group": "b"},
           "on": {"group": "c"}, "on2": {"group": "d"}}


def engine_with(method: str, order: tuple[str, ...] = ("off", "weighted", "on"),
                control: float = 0.0, restraint: float = 0.0, seed: int = 5) -> DecisionEngine:
    """`off` has lever 0, `weighted` a context weight of 0 on mobile, `on` and `on2` neither;
    each its own group, three slots, the default restraint threshold unless given."""
    actions = [{"id": name, **ACTIONS[name]} for name in order]
    doc = {
        "kairos_catalog": 1, "name": "zero", "version": "1",
        "channels": {"web": {"placements": {"hero": {"top_k": 3}}, "control": control}},
        "context": {"device": {"type": "string", "values": ["desktop", "mobile"]}},
        "events": {"seen": {"fields": {}}}, "consent": {"service": True},
        "arbitration": {"exploration": {"method": method, "variance_scale": 1.0,
                                        "trial_rate": 0.0, "selection_samples": SAMPLES},
                        "restraint_threshold": restraint,
                        "context_weights": [{"group": "b", "when": {"device": "mobile"},
                                             "weight": 0}]},
        "actions": [{**a, "purpose": "service", "channels": {"web": {"treatment": "t"}},
                     "value": 5} for a in actions],
        "models": {"prior": {"base_rate": 0.3, "precision": 1.0}},
        "fallbacks": {"web": []}}
    return DecisionEngine(compiled_from_text(yaml.safe_dump(doc)), seed=seed)


def decide(engine: DecisionEngine, i: int, device: str = "mobile"):
    return engine.decide("ana", "web", "hero", {"device": device}, now=T0 + i, explain=True)


@pytest.mark.parametrize("method", ["none", "thompson", "ucb"])
def test_lever_and_context_weight_of_0_are_never_shown(impl, method):
    """Only `on` is shown on mobile, with a selection probability of 1 (nothing else can
    take its slot); the two switched off are dropped by restraint, with a detail that says
    why truly (priority 0 is not below a threshold of 0)."""
    engine = engine_with(method)
    for i in range(40):
        d = decide(engine, i)
        assert [a.action_id for a in d.actions] == ["on"]
        assert d.actions[0].priority > 0.0
        assert d.actions[0].selection == pytest.approx(1.0, abs=1e-12)
        dropped = {x.action_id: x for x in d.explanation.dropped}
        for action in ("off", "weighted"):
            assert dropped[action].reason == "RESTRAINT"
            assert "priority 0 " in dropped[action].detail
            assert "below the restraint threshold" not in dropped[action].detail
            assert "above 0" in dropped[action].detail


@pytest.mark.parametrize("method", ["none", "thompson"])
def test_a_context_weight_of_0_switches_off_only_where_it_applies(impl, method):
    """On desktop the weight does not apply: `weighted` is shown beside `on`."""
    engine = engine_with(method)
    for i in range(10):
        shown = {a.action_id for a in decide(engine, i, "desktop").actions}
        assert shown == {"on", "weighted"}


@pytest.mark.parametrize("control", [0.0, 0.3])
@pytest.mark.parametrize("method", ["none", "thompson"])
def test_only_switched_off_candidates_show_nothing_for_sure(impl, method, control):
    """With nothing but switched-off actions the decision shows nothing, and it logs that
    the policy shows nothing for sure: the Thompson re-runs never show them either, and
    control has nothing eligible to draw."""
    engine = engine_with(method, ("off", "weighted"), control=control)
    for i in range(40):
        d = decide(engine, i)
        assert d.actions == ()
        assert d.nothing_selection == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("restraint", [0.0, 1.5])
def test_kernel_and_twin_agree_draw_for_draw_around_switched_off_actions(monkeypatch,
                                                                         restraint):
    """Thompson draws, the switched-off actions between the live ones in catalog order, at
    the default threshold (the live ones trade places) and one the draws cross (some
    decisions show nothing): the kernel and the twin show the same and estimate the same
    selection probabilities (the re-runs draw for the same actions, never the switched-off
    ones)."""
    runs = {}
    for pure in ("0", "1"):
        monkeypatch.setenv(kernel.PURE_ENV, pure)
        engine = engine_with("thompson", ("off", "on", "weighted", "on2"), restraint=restraint)
        runs[engine.implementation] = [decide(engine, i) for i in range(60)]
    kernel_run, twin_run = runs["cython"], runs["reference"]
    assert any(not d.actions for d in kernel_run) == (restraint > 0.0)
    assert len({tuple(x.action_id for x in d.actions) for d in kernel_run}) > 1  # draws move
    for a, b in zip(kernel_run, twin_run):
        assert [x.action_id for x in a.actions] == [x.action_id for x in b.actions]
        assert [x.selection for x in a.actions] == pytest.approx(
            [x.selection for x in b.actions], abs=1e-9)
        assert (a.nothing_selection is None) == (b.nothing_selection is None)
        if a.nothing_selection is not None:
            assert a.nothing_selection == pytest.approx(b.nothing_selection, abs=1e-9)
        assert not {"off", "weighted"} & {x.action_id for x in a.actions}
