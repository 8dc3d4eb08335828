"""A candidate that refuses requests (a channel it lacks) shows nothing for them, which moves
every estimate: the terminal's summary and `kairos status`'s headline say how many it refused,
not only replay.md, once each: the refusal is no overlap warning, and the headline counts the
report's warnings, its own and the overlap's, as warnings."""
from __future__ import annotations

import numpy as np
import yaml

from bench import truth
from kairos.cluster.evidence import evaluation, report
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.core.catalog import load_catalog


def test_the_summary_and_the_headline_count_the_refused_requests_once():
    log = truth.log(4, truth.customers(np.random.default_rng(4), 40), learn=False)
    doc = yaml.safe_load(truth.logging_catalog())
    first = next(iter(doc["channels"]))
    renamed = yaml.safe_dump(doc).replace(first, "renamed")  # the log's channel is unknown
    replayed = list(replay(log, for_replay(load_catalog(renamed, "candidate")), 4))
    refused = sum(r.refused is not None for r in replayed)
    assert 0 < refused < len(replayed)
    evidence = {"log": "log.jsonl", "candidate": {"file": "c.yaml", "name": "c", "version": "v"},
                "samples": 4, "candidate_error": 0.25, "models": "priors",
                **evaluation.evaluate(replayed)}
    says = f"the candidate refused {refused} of {len(replayed)} requests (shown as nothing)"
    first_line = report.summary(evidence).splitlines()[0]
    assert first_line.endswith(says)
    assert f"refused, e.g.: channel: unknown channel '{first}'" in report.summary(evidence)
    warnings = evidence["warnings"] + evidence["overlap"]["warnings"]
    assert not any("refused" in w for w in warnings)
    assert report.summary(evidence).count(says) == 1
    assert warnings and all(f"warning: {w}" in report.summary(evidence) for w in warnings)
    assert report.headline(evidence).endswith(f"; {says}; {len(warnings)} warning(s)")
    assert f"{says.capitalize()}, e.g.: channel: unknown" in report.markdown(evidence, None)
