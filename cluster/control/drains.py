"""The drains of nodes under way, by node.

A DrainNode cut at its relaying gateway is sent again through another (cli/operate.py): the
drain asked for again while the first runs joins it and answers its result (the partitions
and shards it moved), rather than waiting for it, finding the node empty, answering that
nothing moved, and waiting the unready period again."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class Drains:
    def __init__(self) -> None:
        self._by_node: dict[str, asyncio.Future] = {}

    def running(self) -> set[str]:
        """The nodes a drain is working on now."""
        return {node for node, task in self._by_node.items() if not task.done()}

    async def join(self, node: str, drain: Callable[[], Awaitable[dict[str, Any]]]
                   ) -> dict[str, Any]:
        """The result of `node`'s drain running now, else of `drain()`, started now. It runs
        on when a caller is cancelled (a relay's call cut), for the retry to join."""
        task = self._by_node.get(node)
        if task is None:
            task = self._by_node[node] = asyncio.ensure_future(drain())
            task.add_done_callback(lambda _: self._by_node.pop(node, None))
        return await asyncio.shield(task)
