"""A block's extras (a customer's timers, watches, aliases, keys) come back from the store and
other processes too: `validate` checks their shape, so a home whose extras do not hold
together is a damaged home that refuses its customer, not an error that fails the round for
every customer in it."""
from __future__ import annotations

import math

import pytest

from kairos.cluster.protocol import Unavailable
from kairos.cluster.shard.keys import RECORD
from kairos.cluster.storage import block_checks, blocks
from kairos.cluster.storage.sealed import seal, unseal
from tests.unit.shard.test_homes import passivated
from tests.unit.shard.test_shard import T0, event, p_of
from tests.unit.storage.test_blocks import exported

SOUND = {"timers": {"cart_abandoned": T0}, "watches": [["sink-1", "push", None, "ana"]],
         "shown": [["push", None, ["cart_recovery_push"]]], "aliases": ["k"], "links": ["l"],
         "key_records": bytes(RECORD.size), "home": True,
         "keys": [["key", 0, T0], ["another", 2**64 - 1, T0]],  # keys.py's uint64, both ends
         "a key of a later version": {"anything": 1}}
MALFORMED = [5, [], {"watches": []}, {"timers": {}},
             {**SOUND, "timers": 5}, {**SOUND, "timers": {"t": math.nan}},
             {**SOUND, "timers": {"t": "soon"}}, {**SOUND, "watches": [["sink-1"]]},
             {**SOUND, "watches": "sink-1"}, {**SOUND, "shown": [["push", None, 3]]},
             {**SOUND, "aliases": [1]}, {**SOUND, "links": None},
             {**SOUND, "key_records": bytes(RECORD.size - 1)},
             {**SOUND, "key_records": None}, {**SOUND, "keys": [["key", 1]]},
             # a sequence keys.py cannot pack (struct.error, after the load)
             {**SOUND, "keys": [["key", -1, T0]]}, {**SOUND, "keys": [["key", 2**64, T0]]},
             {**SOUND, "keys": [["key", 1.5e20, T0]]},
             {**SOUND, "home": 1}]


def test_sound_extras_and_none_are_valid(compiled):
    block = exported(compiled)
    assert all(extra is not None for extra in block["extras"])
    blocks.validate(block)
    blocks.validate({**block, "extras": [SOUND, None]})


@pytest.mark.parametrize("extra", MALFORMED, ids=repr)
def test_malformed_extras_are_corrupt(compiled, extra):
    block = exported(compiled)
    with pytest.raises(blocks.BlockCorrupt, match="extras"):
        blocks.validate({**block, "extras": [block["extras"][0], extra]})


def test_a_key_record_is_as_long_as_keys_writes_it():
    assert block_checks.KEY_RECORD_BYTES == RECORD.size


def test_a_home_with_malformed_extras_refuses_its_customer_and_the_round_goes_on(
        compiled, tmp_path):
    s, _ = passivated(compiled, tmp_path, "ana", "bob")
    block = blocks.unpack(unseal(s.store.get(p_of("ana"), "ana"), "home")[0])
    block["extras"] = [{**block["extras"][0], "timers": 5}]
    s.store.put(p_of("ana"), "ana", seal(blocks.pack(block)))
    replies, _ = s.process([event("bob", "app_open", T0 + 1), event("ana", "app_open", T0 + 1)])
    assert replies[0].status == "ok"
    assert isinstance(replies[1], Unavailable) and "damaged" in replies[1].reason
