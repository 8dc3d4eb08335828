"""A forget whose first step keeps being answered MERGED (a link's hand-over that each merge and
settle should end, but does not: a shard failing that step) fails as ShardUnavailable, to be
retried, once FORGET_MERGES rounds did not end it, instead of looping for as long as the shard
answers so. LocalBackend, no Ray."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster import protocol
from kairos.cluster.transport import sagas
from kairos.cluster.transport.backend import ShardUnavailable
from kairos.cluster.transport.client import KairosClient

from tests.support.local_backend import LocalBackend


class KeepsMerged(LocalBackend):
    """Every Forget of `~cookie:a` is answered MERGED, naming ana; the rest is applied."""

    forgets = 0

    async def send(self, name, session, seq, requests, routed):
        if not any(isinstance(r, protocol.Forget) and r.customer_id == "~cookie:a"
                   for r in requests):
            return await super().send(name, session, seq, requests, routed)
        await super().send(name, session, seq, [], [])  # its turn taken: the session goes on
        self.forgets += 1
        return [protocol.Merged(customer_id="ana")] * len(requests)


def test_a_forget_answered_merged_each_round_fails_unavailable_after_its_rounds():
    async def main():
        backend = KeepsMerged()
        await backend.start_runtime(1, n_partitions=8)
        client = await KairosClient(backend).connect()
        with pytest.raises(ShardUnavailable, match="retry the forget"):
            await asyncio.wait_for(client.forget("~cookie:a"), 10)
        assert backend.forgets == sagas.FORGET_MERGES + 1  # the last merge's Forget sent too
        await client.close()

    asyncio.run(main())
