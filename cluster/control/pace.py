"""How often the control loop runs its round (actor.py, rounds.py).

A round asks every shard its health and the learner its status, and reads Ray's node table:
Ray actor calls that cost the shards, the learner, the controller and Ray's GCS about 13 ms
of CPU a second together on an idle node (issue 17), every CONTROL_LOOP_S, to find nothing
to do almost always. So while rounds find the cluster settled (rounds.py `settled`: every
shard started as the incarnation known, nothing left to retry), the wait between rounds
doubles, up to IDLE_ROUND_S. What a round is for still comes within CONTROL_LOOP_S:

- a shard or the learner that Ray restarted, and a shard whose journal is no longer its own,
  wake the loop at once (`wake`: the controller's `nudge`, called from their processes), as
  does any call that changes the cluster (a scale, a catalog, a drain, a watch);
- the node table is still read every CONTROL_LOOP_S while the loop waits, and a node that
  joined or left runs the round at once;
- a round that is not settled (a failed step, a move, a replacement, a drain, a catch-up or
  a gateway waiting) brings the wait back to CONTROL_LOOP_S.

A nudge that is lost (the controller restarting as it is sent: it takes up every shard as it
starts anyway) is made up for by the round IDLE_ROUND_S later at most.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

IDLE_ROUND_S = 8.0  # the longest wait between rounds while the cluster is settled


class Pace:
    def __init__(self, nodes: Callable[[], list[str]], every_s: float,
                 idle_s: float = IDLE_ROUND_S):
        """`nodes()`: the alive nodes, read now (the backend's)."""
        self._nodes = nodes
        self.every_s = every_s
        self.idle_s = max(idle_s, every_s)
        self.wait_s = every_s  # from the end of a round to the start of the next
        self._alive: set[str] | None = None  # what the last round saw
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """The next round now (at once if none runs), and every CONTROL_LOOP_S from then."""
        self.wait_s = self.every_s
        self._woken.set()

    def ran(self, settled: bool, alive: list[str] | None) -> None:
        """A round ended: `settled` (it left nothing to do) doubles the wait, else it is
        CONTROL_LOOP_S again; `alive`: the nodes it saw (None: it read none)."""
        self.wait_s = min(2 * self.wait_s, self.idle_s) if settled else self.every_s
        self._alive = None if alive is None else set(alive)

    async def next_round(self) -> None:
        """Once the next round is due: `wait_s` after the last, or when woken, or when the
        alive nodes are no longer those the last round saw (read every CONTROL_LOOP_S)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.wait_s
        while not self._woken.is_set():
            left = due - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.every_s)):
                    await self._woken.wait()
            if not self._woken.is_set() and due - loop.time() > 0 and self._nodes_moved():
                return
        self._woken.clear()

    def _nodes_moved(self) -> bool:
        try:
            return set(self._nodes()) != self._alive
        except Exception:  # Ray's GCS did not answer: the round reads it again, and says why
            return True
