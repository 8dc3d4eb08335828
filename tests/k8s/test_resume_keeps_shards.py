"""The head sets KAIROS_RESUME_KEEPS_SHARDS on: kairos-head.sh runs `kairos start --shards
$KAIROS_SHARDS` at every start, and a full restart (a Recreate upgrade, the head restarted, a
suspend and resume) must keep the shards the workers were given rather than move all their
partitions into KAIROS_SHARDS before the head serves (cluster/control/takeup.py). The
controller reads it, and runs on the head: the workers need not set it."""
from __future__ import annotations

import pytest

from tests.support.manifests import env_of, head

OVERLAYS = ("laptop", "production")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_head_keeps_the_saved_shards_at_a_restart(overlay):
    env = env_of(head(overlay)["spec"]["containers"][0])
    assert env.get("KAIROS_RESUME_KEEPS_SHARDS", {}).get("value") == "1", \
        f"{overlay}: the head does not set KAIROS_RESUME_KEEPS_SHARDS to 1"
