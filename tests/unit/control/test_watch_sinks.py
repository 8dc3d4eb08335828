"""Channel watches whose sink is gone (transport/ray_backend.py `Gone`: the gateway process
whose streams registered them died, or Ray restarted it as another incarnation) leave the
controller's state and the shards in a control round; a sink that does not answer keeps
them, as does one that answers."""
from __future__ import annotations

import asyncio

from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.ray_backend import Gone, sink_name

from tests.support.local_backend import LocalSink
from tests.unit.control.actors import Actors, controller_on

GONE = sink_name("kairos-gateway-0", "before")  # Ray restarted it: its streams died
RESTARTED = sink_name("kairos-gateway-0", "after")
SLOW = sink_name("kairos-gateway-1", "wedged")


class Sink(LocalSink):
    async def deliver(self, decisions: list) -> None:
        if self.name == GONE:
            raise Gone("kairos-gateway-0: incarnation before is gone (this is after)")
        if self.name == SLOW:
            raise Unavailable("kairos-gateway-1: no answer within 30 s")
        await super().deliver(decisions)


class Sinks(Actors):
    def sink(self, name: str) -> Sink:
        return Sink(self, name)


def test_a_round_drops_the_channel_watches_of_sinks_gone_and_only_those(tmp_path):
    async def main():
        backend = Sinks()
        controller = await controller_on(backend, str(tmp_path), 2)
        for sink in (GONE, RESTARTED, SLOW):
            await controller.watch_channel(sink, "web", None)
        await controller.watch_channel(GONE, "app", None)
        await controller.reconcile()
        assert controller.channel_watches == {(RESTARTED, "web", None), (SLOW, "web", None)}
        for name, shard in backend.shards.items():
            assert {w.sink for w in shard.watches.channel} == {RESTARTED, SLOW}, name
    asyncio.run(main())
