"""ForgetCustomer by an alias whose forget was cut after its Bury (its client died before the
last Retires): the gateway resolves the alias as a forget saga does, so the retry finds the
forgotten customer, erases what the alias's visitor left since, and releases the alias
(real gRPC on 127.0.0.1, in-process backend)."""
from __future__ import annotations

from kairos.cluster.identity import link_id
from kairos.cluster.protocol import Bury, Forget, Resolve, Retire
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.unit.shard.test_shard import T0


def test_forget_customer_by_the_alias_finishes_a_forget_cut_after_its_bury():
    with serving() as (gateway, channel):
        client = gateway.client

        async def cut_after_bury() -> None:
            await client.ingest("ana", "app_open", T0)
            await client.link("cookie", "a", "ana")
            await client._ask(Forget(customer_id="ana"))
            await client._value(Retire(key="cookie:a", customer_id="ana"))
            await client._ask(Forget(customer_id="~cookie:a", link=link_id("cookie:a", "ana")))
            await client._ask(Bury(customer_id="ana"))
            # a visitor's event by the alias since
            await client.ingest(await client.resolve("cookie", "a"), "page_view", T0 + 60,
                                {"category": "home"})
        gateway.run(cut_after_bury())
        stub = DecisionServiceStub(channel)
        stub.ForgetCustomer(pb.ForgetRequest(alias=pb.Alias(type="cookie", value="a")))
        as_forget = Resolve(key="cookie:a", for_forget=True)
        assert gateway.run(client._value(as_forget)) == "~cookie:a"
        shards = client.backend.shards.values()
        assert not any(s.directory.retiring.get(p) for s in shards for p in range(16))
        assert not any("~cookie:a" in s.engine.table.index or "ana" in s.engine.table.index
                       for s in shards)
