"""A long poll answers at once when the caller is behind, at the announcement that makes it
so, and False when its time passes first."""
from __future__ import annotations

import asyncio

from kairos.cluster.longpoll import Changes


def test_a_waiter_looks_again_at_each_announcement_until_done_or_timed_out():
    changes = Changes()
    version = [1]

    async def main():
        assert await changes.wait_until(lambda: version[0] >= 1, 5.0)  # done already
        waiter = asyncio.create_task(changes.wait_until(lambda: version[0] >= 3, 5.0))
        await asyncio.sleep(0.01)
        version[0] = 2
        changes.announce()  # not enough: it waits on
        await asyncio.sleep(0.01)
        assert not waiter.done()
        version[0] = 3
        changes.announce()
        assert await waiter
        assert not await changes.wait_until(lambda: version[0] >= 4, 0.05)
    asyncio.run(main())
