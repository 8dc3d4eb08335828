"""A disowned shard is not started again (which claims its journal) while this cluster's claim
on the store was not renewed for `lease_s - renew_s`: its lease may have run out and another
cluster hold the store, whose shard would claim the journal back, each start rebuilding the
other cluster's (review rev41 d-fence round 2, finding 3). It is, once a renewal lands."""
from __future__ import annotations

import asyncio

from tests.unit.control.test_control_loop import rounds
from tests.unit.control.test_disowned import Losing, disowned
from tests.unit.control.actors import controller_on


def test_a_disowned_shard_waits_for_the_cluster_s_claim_to_be_renewed(tmp_path):
    async def main():
        backend = Losing()
        controller = await controller_on(backend, str(tmp_path))
        backend.starts.clear()
        name = controller.shards[1]
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
