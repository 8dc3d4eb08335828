"""A request array whose partition or customer is of another type answers Invalid by itself:
the shard indexes and hashes its tables by them, and a round that raised would fail every
caller's request in it and rebuild the shard."""
from __future__ import annotations

import pytest

from kairos.cluster.protocol import EventAck, Invalid

from .test_shard import T0, event, shard


@pytest.mark.parametrize("bad", [
    ["decide", 0, ["ana"]], ["profile", 0, {"ana": 1}], ["event", "0", "ana"],
    ["watch", 0.5, "ana"], ["resolve", 0, None]], ids=str)
def test_a_request_array_of_the_wrong_types_fails_alone(compiled, bad):
    s = shard(compiled, "s0")
    good = event("ana", "app_open", T0)
    replies, _ = s.process([bad, list(good)])
    assert isinstance(replies[0], Invalid) and replies[0].field == "request"
    assert replies[1] == EventAck(sequence=1)
