"""A catalog switch away from a watched view and straight back (a rollback within the
gateway's one-second look) is never compiled by the gateway, yet the shards dropped the watch
at it: the gateway registers every watch again after each compile, so the watch comes back
(it stayed open with nothing pushed); one refused ends its streams (test_watch_register_again)
(review rev44 d-streams 2)."""
from __future__ import annotations

from kairos.cluster.gateway import calls
from kairos.core.catalog import default_catalog_text
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend
from tests.support.waiting import wait_until


def held(backend: LocalBackend) -> list[str]:
    """The watches the shards hold, by view."""
    return [f"{w.channel}/{w.placement}" for shard in backend.shards.values()
            for w in (*(x for m in shard.watches.by_customer.values() for x in m),
                      *shard.watches.channel)]


def test_a_customers_watch_dropped_by_a_switch_and_its_rollback_is_registered_again(
        monkeypatch):
    """(A channel's watch the controller tells the shards again at each switch.) The gateway
    does not look on its own here: a look between the two switches, which a loaded machine's
    slow switch made, compiles the catalog without the view and rightly ends the watch."""
    monkeypatch.setattr(calls, "CATALOG_FOLLOW_S", 3600.0)
    backend = LocalBackend()
    with serving(backend=backend) as (gw, channel):
        stub = DecisionServiceStub(channel)
        stub.Ingest(pb.Event(customer_id="hal", type="app_open", channel="web"), timeout=10)
        watch = stub.WatchDecisions(pb.WatchRequest(customer_id="hal",
                                                    channel="call_center", placement="ivr"),
                                    timeout=120)  # two switches and a compile on a loaded machine
        watch.initial_metadata()
        assert "call_center/ivr" in held(backend)
        base = default_catalog_text()
        without = base.replace("version: ", "version: no-ivr-", 1).replace(
            "      ivr: {top_k: 1}", "", 1).replace("placements: [agent_screen, ivr]",
                                                    "placements: [agent_screen]")
        gw.run(backend.controller().put_catalog(without))
        gw.run(backend.controller().put_catalog(base.replace("version: ", "version: back-", 1)))
        assert "call_center/ivr" not in held(backend)  # dropped at the switch away
        gw.run(gw.gateway.refresh_catalog())  # the gateway's next look
        wait_until(lambda: "call_center/ivr" in held(backend), 10,
                   "the watch registered again once the rollback was compiled")
        assert gw.gateway._compiled.version.startswith("back-")
        watch.cancel()
