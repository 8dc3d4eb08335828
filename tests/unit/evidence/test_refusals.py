"""A candidate that refuses requests (a channel it lacks) shows nothing for them, which moves
every estimate: the terminal's summary, the overlap warnings and `kairos status`'s headline
say how many it refused, not only replay.md."""
from __future__ import annotations

import numpy as np
import yaml

from bench import truth
from kairos.cluster.evidence import evaluation, report
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.core.catalog import load_catalog


def test_the_summary_the_warnings_and_the_headline_count_the_refused_requests():
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
    warnings = evidence["overlap"]["warnings"]
    assert warnings[0].startswith(f"{says}: channel: unknown channel '{first}'")
    assert f"warning: {warnings[0]}" in report.summary(evidence)
    assert f"; {says}; {len(warnings)} overlap warning(s)" in report.headline(evidence)
    assert f"{says.capitalize()}, e.g.: channel: unknown" in report.markdown(evidence, None)
