"""What replay.md says of its own numbers."""
from __future__ import annotations

import math

from kairos.cluster.evidence import report


def test_the_estimates_table_does_not_call_the_accept_rates_intervals_normal():
    """The accept rate's intervals are at least Wilson's (estimators.py), not normal ones."""
    evidence = {"log": "log.jsonl", "candidate": {"name": "c", "version": "v"}, "samples": 4,
                "candidate_error": 0.25, "models": "priors", "logged_catalogs": ["1"],
                "records": 0, "evaluated": 0, "excluded_no_selection": 0,
                "refused": {"count": 0, "examples": []}, "estimates": {}, "logged": {},
                "differs": {"overall": math.nan, "by_channel": {}, "by_logged_action": {}},
                "shares": {}, "warnings": [], "overlap": {"warnings": []}}
    text = report.markdown(evidence, None)
    assert "normal intervals" not in text
    assert "95 % intervals: normal, the accept rate's at least Wilson's" in text
