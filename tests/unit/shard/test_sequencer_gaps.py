"""The shard's sequencer against numbers a session will never reach (review finding): a
replayed number, or one after a gap, used to wait in the shard for good, holding a call slot
on its connection and keeping its session from being forgotten."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.shard.sequencer import OutOfTurn, Sequencer


def test_a_number_the_session_is_past_fails_at_once():
    async def main():
        sequencer = Sequencer(start_s=0.05, gap_s=5)
        await sequencer.turn("s", 0)
        await sequencer.turn("s", 1)
        with pytest.raises(OutOfTurn, match="batch 0 of a session at batch 2"):
            await asyncio.wait_for(sequencer.turn("s", 0), 1)
        assert not sequencer._waiting
        await asyncio.wait_for(sequencer.turn("s", 2), 1)  # the session goes on

    asyncio.run(main())


def test_a_number_after_a_gap_fails_once_the_gap_outlives_its_deadline():
    async def main():
        sequencer = Sequencer(start_s=0.05, gap_s=0.2)
        await sequencer.turn("s", 0)
        started = asyncio.get_running_loop().time()
        with pytest.raises(OutOfTurn, match="batch 5 of a session at batch 1: the batches "
                                             "between did not come in time"):
            await asyncio.wait_for(sequencer.turn("s", 5), 2)
        assert 0.2 <= asyncio.get_running_loop().time() - started < 1
        assert not sequencer._waiting
        await asyncio.wait_for(sequencer.turn("s", 1), 1)  # the session goes on

    asyncio.run(main())


def test_a_gap_filled_within_the_deadline_keeps_the_order():
    async def main():
        sequencer, order = Sequencer(start_s=0.05, gap_s=1), []
        await sequencer.turn("s", 0)

        async def batch(seq: int, after_s: float):
            await asyncio.sleep(after_s)
            await sequencer.turn("s", seq)
            order.append(seq)

        await asyncio.gather(batch(3, 0), batch(2, 0.1), batch(1, 0.3))
        assert order == [1, 2, 3]

    asyncio.run(main())


@pytest.mark.parametrize("gap_s", [0.1, 0.2])
def test_an_unseen_session_starts_after_start_s_however_short_the_gap_deadline(gap_s):
    """Review finding: with gap_s <= start_s (PLANE_CALL_S <= SESSION_START_S) the gap's
    deadline ended the wait before `start_s` did, so a session the shard had not seen (its
    earlier batches went to the previous incarnation) never started: each batch failed."""
    async def main():
        sequencer = Sequencer(start_s=0.2, gap_s=gap_s)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(sequencer.turn("fresh", 5), 2)
        assert asyncio.get_running_loop().time() - started >= 0.19  # timers' resolution
        await asyncio.wait_for(sequencer.turn("fresh", 6), 1)  # the session goes on

    asyncio.run(main())
