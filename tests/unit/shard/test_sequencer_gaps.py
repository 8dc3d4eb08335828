"""The shard's sequencer against numbers a session will never reach (review finding): a
replayed number, or one after a gap, used to wait in the shard for good, holding a call slot
on its connection and keeping its session from being forgotten."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

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


def test_an_unseen_sessions_start_counts_against_its_gap_deadline():
    """Review finding: an unseen session's batch after a gap waited `start_s` for the session
    to start and then `gap_s` more, past the half of the client's deadline that `gap_s` is: the
    client dropped the connection, with every call on it, before the gap error came. The gap
    deadline runs from the batch's arrival."""
    async def main():
        sequencer = Sequencer(start_s=0.6, gap_s=0.8)
        started = asyncio.get_running_loop().time()

        async def gapped() -> float:
            with pytest.raises(OutOfTurn, match="batch 7 of a session at batch 6"):
                await sequencer.turn("fresh", 7)  # batch 6 never comes
            return asyncio.get_running_loop().time() - started

        _, took = await asyncio.wait_for(asyncio.gather(sequencer.turn("fresh", 5), gapped()),
                                         5)
        assert 0.79 <= took < 1.2  # not start_s + gap_s (1.4)

    asyncio.run(main())


def test_a_session_start_at_least_half_the_call_deadline_stops_the_settings_import():
    """The gap deadline (half PLANE_CALL_S) must leave an unseen session time to start."""
    env = {**os.environ, "KAIROS_SESSION_START_S": "15", "KAIROS_PLANE_CALL_S": "30"}
    done = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"], env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "ValueError: KAIROS_SESSION_START_S (15) must be less than half of " \
           "KAIROS_PLANE_CALL_S (30)" in done.stderr
