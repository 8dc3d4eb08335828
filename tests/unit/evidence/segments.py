"""The two-segment world the unseen-mass tests log from: decision i is of segment i % 2, each of
its own customer, and the action shown is accepted at RATES[segment, action], an accept worth
VALUE."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kairos.cluster.evidence.replay import Replayed

RATES = {(0, "A"): 0.3, (1, "A"): 0.6, (0, "B"): 0.2, (1, "B"): 0.2}
VALUE = 10.0


def segments_log(shown: Callable[[np.random.Generator, int], str], selection: float,
                 candidate: Callable[[int], dict[str, float]], n: int = 4000,
                 value: Callable[[int, float], float] = lambda i, accepted: accepted * VALUE,
                 **fields: Callable[[str], Any]) -> list[Replayed]:
    """`shown(rng, segment)` the logged action, at `selection`; `candidate(segment)` what the
    candidate would show; `value(i, accepted)` what decision i earned; each of `fields` a
    Replayed field of the logged action."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        segment = i % 2
        logged = shown(rng, segment)
        accepted = float(rng.random() < RATES[segment, logged])
        earned = value(i, accepted)
        rows.append(Replayed(f"d{i}", "v1", "web", "hero", logged, selection,
                             float(accepted or earned > 0), earned, {"segment": float(segment)},
                             candidate(segment), customer=f"c{i}",
                             **{name: field(logged) for name, field in fields.items()}))
    return rows
