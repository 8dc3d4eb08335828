"""The simulator's world and measures on hand-made inputs (bench/world.py, bench/simreport.py):
the new action is truly best where the world says, adoption is measured to the last shard
running a version or a later one, and "reached and held" means held to the end."""
from __future__ import annotations

import numpy as np

from bench import simreport
from bench.world import (ACTIONS, BASE_ACTIONS, NEW_ACTION, Population, candidate_catalog,
                         expected_rewards, launch_share, running_catalogs)
from kairos.core.compiler import compiled_from_text


def test_the_world_offers_care_on_web_only_and_the_new_action_is_best_for_its_share():
    population = Population.draw(500, seed=3)
    n = len(population)
    customers = np.arange(n)
    app = expected_rewards(population, customers, np.zeros(n, bool), np.zeros(n, bool),
                           np.zeros(n, bool))
    assert (app[:, ACTIONS.index("care")] == 0).all() and (app[:, :3] > 0).all()
    share = launch_share(population)
    assert 0.2 < share < 0.5
    first, launch = (compiled_from_text(text) for text in running_catalogs(0.1))
    assert NEW_ACTION not in first.action_ids and NEW_ACTION in launch.action_ids
    assert list(compiled_from_text(candidate_catalog()).action_ids) == list(BASE_ACTIONS)


def test_adoption_runs_from_the_publish_to_the_last_shard_with_that_version_or_later():
    publishes = {10: 100.0, 11: 100.2, 12: 101.0, 13: 103.0}
    adoptions = {"s0": {10: 100.01, 12: 101.01}, "s1": {11: 100.4, 12: 101.5}}
    figures = simreport.adoption(publishes, adoptions, switch=(100.9, 101.1))
    # 10: s0 at 100.01, s1 (11 >= 10) at 100.4; 11: s0 (12) at 101.01, s1 at 100.4, so the
    # switch held it up, as it did 12, published during it; 13 no shard ran
    assert figures["lags_ms"] == [400.0]
    assert figures["during_switch"] == 2 and figures["during_switch_max_ms"] == 810.0
    assert figures["not_adopted_by_all"] == 1 and figures["publishes"] == 1


def test_reached_and_held_means_from_some_window_to_the_end():
    assert simreport._held_from([False, True, False, True, True]) == 3
    assert simreport._held_from([True, True]) == 0
    assert simreport._held_from([True, False]) is None
    counts = np.zeros(len(ACTIONS), int)
    counts[ACTIONS.index(NEW_ACTION)] = 5
    counts[0] = 5  # a tie ranks the new action below
    assert simreport._rank(counts) == 2
