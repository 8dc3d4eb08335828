"""A saved posterior taken up in one step, as tests want it: the learner actor does the two
steps itself (posterior.py `restoring` on a thread, `take_up` on its loop)."""
from __future__ import annotations

from typing import Any

from kairos.cluster.control.posterior import restoring, take_up


def restore_models(learner: Any, blob: bytes, follow_catalog: bool = False) -> bool:
    """Take up a saved posterior; whether it was (`restoring` refused it or not)."""
    ready = restoring(learner, blob, follow_catalog)
    if ready is not None:
        take_up(learner, ready)
    return ready is not None
