"""The drains of nodes, by node: those under way, and the last result of each node that stays
drained.

A DrainNode cut at its relaying gateway is sent again through another (cli/operate.py),
without knowing whether the first ended meanwhile. Asked for again while the first runs, the
drain joins it; asked for after it ended, while the node stays drained (no shard, no
gateway), it answers the first one's result at once. Either way the answer is what the drain
moved, rather than a drain of the empty node, which answered that nothing moved after another
unready period. Results are kept in memory only: a controller Ray restarted drains such a node
anew (nothing left to move)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from kairos.cluster.control.nodes import NodeRefused, NodeUnknown
from kairos.cluster.transport.backend import Unavailable

log = logging.getLogger("kairos.controller")


class Drains:
    def __init__(self, drained: Callable[[str], bool]):
        """`drained(node)`: whether the node is marked draining and holds no shard and no
        gateway, so that a drain's result still stands."""
        self._drained = drained
        self._by_node: dict[str, asyncio.Future] = {}  # running, or done and still standing
        self._cancelled = False  # with the control loop, for good

    def running(self) -> set[str]:
        """The nodes a drain is working on now."""
        return {node for node, task in self._by_node.items() if not task.done()}

    async def join(self, node: str, drain: Callable[[], Awaitable[dict[str, Any]]]
                   ) -> dict[str, Any]:
        """The result of `node`'s drain running now, or of its last one while the node stays
        drained, else of `drain()`, started now. It runs on when a caller is cancelled (a
        relay's call cut), for the retry to join. Unavailable once the drains were cancelled:
        one started then would go on, as they did."""
        for done in [n for n, t in self._by_node.items() if t.done() and not self._drained(n)]:
            del self._by_node[done]  # served again (the autoscaler took it back), or gone
        task = self._by_node.get(node)
        if task is None:
            if self._cancelled:
                raise Unavailable("the controller is stopping")
            task = self._by_node[node] = asyncio.ensure_future(drain())
            task.add_done_callback(lambda _: self._ended(node, task))
        return await asyncio.shield(task)

    def _ended(self, node: str, task: asyncio.Future) -> None:
        """A drain that failed or was cancelled is started anew by the next call; its error
        is logged here, since a caller cut short (the control loop stopped, a relay's call
        cut) never sees it. A drain refused (the node is gone, or may not be drained) is not
        logged: it ends before any work, and its caller gets the refusal."""
        if task.cancelled() or task.exception() is not None:
            if self._by_node.get(node) is task:
                del self._by_node[node]
            if not task.cancelled() and not isinstance(task.exception(),
                                                        (NodeUnknown, NodeRefused)):
                log.error("the drain of node %s failed", node, exc_info=task.exception())

    async def cancel(self) -> None:
        """Cancel the drains under way, and return once they ended: the control loop stops
        (runtime.stop, whose next steps list and stop the shards; a controller that lost its
        store), and a drain going on would create and start shards meanwhile. None starts
        after."""
        self._cancelled = True
        running = [task for task in self._by_node.values() if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
