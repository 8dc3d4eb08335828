"""The shard's sequencer: each session's batches in their order, in bounded memory."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.shard.sequencer import MAX_SESSION_LENGTH, Sequencer


def test_batches_take_their_turns_in_the_order_numbered():
    async def main():
        sequencer, order = Sequencer(start_s=5), []

        async def batch(seq: int):
            await sequencer.turn("s", seq)
            order.append(seq)

        await asyncio.gather(*(batch(seq) for seq in (2, 0, 3, 1)))
        assert order == [0, 1, 2, 3]
    asyncio.run(main())


def test_past_the_sessions_kept_the_least_recently_used_is_forgotten_and_starts_again():
    async def main():
        sequencer = Sequencer(start_s=0.05, kept=3)
        for session in ("a", "b", "c"):
            await sequencer.turn(session, 0)
        await sequencer.turn("a", 1)  # a used last: b is the oldest now
        await sequencer.turn("d", 0)
        assert list(sequencer._turns) == ["c", "a", "d"]
        # b comes back mid-stream: taken as a session this incarnation has not seen
        await asyncio.wait_for(sequencer.turn("b", 7), 2)
        assert sequencer._turns["b"] == 8 and len(sequencer._turns) == 3
    asyncio.run(main())


def test_a_session_name_past_its_bound_is_refused():
    async def main():
        with pytest.raises(ValueError, match="over 64"):
            await Sequencer().turn("s" * (MAX_SESSION_LENGTH + 1), 0)
    asyncio.run(main())
