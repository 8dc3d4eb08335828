"""A store that loses the start's claim on a shard's journal (Redis failing over to a replica
behind it, restarting from older persistence, FLUSHALL; a directory restored from a copy)
while the shard's one incarnation runs: its rebuild finds the journal not its own and stays
down, with a health that says why truly and marks it `disowned`, which the controller acts on
(rounds.py: it starts the shard again, and the start claims the journal). Review rev41
d-fence, finding 1."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from kairos.cluster.protocol import EventAck
from kairos.cluster.shard.host import ShardHost

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

from .test_same_name import EVERY, opener
from .test_shard import N_PARTITIONS, T0, event, profile


def lose_writes(kind: str, open_store, tmp_path, request):
    """What the store holds now, and a call that puts it back so, losing what came after."""
    if kind == "redis":
        r, prefix = open_store().r, f"{request.node.name}:".encode()

        def keys() -> list[bytes]:  # the test's name holds brackets: no KEYS pattern
            return [k for k in r.keys() if k.startswith(prefix)]
        held = {k: r.dump(k) for k in keys()}

        def back() -> None:
            r.delete(*keys())
            for k, v in held.items():
                r.restore(k, 0, v)
        return back
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(tmp_path, copy)

    def restored() -> None:
        shutil.rmtree(tmp_path)
        shutil.copytree(copy, tmp_path)
    return restored


@pytest.mark.parametrize("kind", ["directory", "redis"])
@pytest.mark.parametrize("before", ["an earlier incarnation's claim", "no claim"])
def test_a_shard_whose_claim_the_store_lost_says_so_and_serves_once_started_again(
        compiled, tmp_path, request, kind, before):
    open_store = opener(kind, tmp_path, request)

    def host() -> ShardHost:
        return ShardHost("s0", N_PARTITIONS, 0, open_store, "fsync", tick_s=3600.0)

    async def main():
        if before == "an earlier incarnation's claim":
            earlier = host()
            await earlier.start(compiled, EVERY, [])
            assert await earlier.handle("a", 0, [event("ana", "app_open", T0)], [0]) == \
                [EventAck(sequence=1)]
            earlier.stop()
            earlier.shard.close()
        back = lose_writes(kind, open_store, tmp_path, request)
        known = 1 if before == "an earlier incarnation's claim" else 0
        live = host()
        await live.start(compiled, EVERY, [])  # claims the journal
        assert await live.handle("b", 0, [event("ana", "app_open", T0 + 1)], [0]) == \
            [EventAck(sequence=known + 1)]
        back()  # the store loses the claim and the event after it
        late, = await live.handle("b", 1, [event("ana", "app_open", T0 + 2)], [0])
        assert late.status == "unavailable"
        await asyncio.sleep(0.5)  # it rebuilds, and retries
        assert live.shard is None
        assert live.recovery["disowned"] is True
        assert "the store lost its claim" in live.recovery["failed"]
        assert "until the controller starts it again" in live.recovery["failed"]
        await live.start(compiled, EVERY, [])  # what the controller does (rounds.py)
        assert live.shard is not None, live.recovery
        assert await live.handle("c", 0, [event("ana", "app_open", T0 + 3)], [0]) == \
            [EventAck(sequence=known + 1)]  # the store lost the event at known + 1
        reads = await live.handle("c", 1, [profile("ana", T0 + 4)], [0])
        assert reads[0].value["events_applied"] == known + 1
        live.stop()
        live.shard.close()
    asyncio.run(asyncio.wait_for(main(), 30))
