"""A disowned shard is not started again (which claims its journal) while this cluster's claim
on the store was not renewed for `lease_s - renew_s`: its lease may have run out and another
cluster hold the store, whose shard would claim the journal back, each start rebuilding the
other cluster's (review rev41 d-fence round 2, finding 3). It is, once a renewal lands."""
from __future__ import annotations

import asyncio

from tests.unit.control.test_control_loop import rounds
from tests.unit.control.test_disowned import disowned, started


def test_a_disowned_shard_waits_for_the_cluster_s_claim_to_be_renewed(tmp_path):
    async def main():
        backend, controller, name = await started(tmp_path)
        backend.down(name, disowned(name))
        claim = controller.store_claim
        renewed = claim._renewed
        claim._renewed -= claim.lease_s  # its renewals failed this long
        await rounds(controller, 2)
        assert backend.shards[name] is None and not backend.starts
        claim._renewed = renewed  # a renewal landed
        await rounds(controller)
        assert backend.shards[name] is not None and backend.starts == {name: 1}
    asyncio.run(main())
