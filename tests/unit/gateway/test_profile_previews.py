"""GetProfile decides on every channel for an agent's screen: previews, which the shards do
not log, over real gRPC on the in-process backend. Each view of a customer page logged a
decision per channel that no channel showed, and replay and `kairos uplift` counted them as
decisions that earned nothing."""
from __future__ import annotations

import json
import time

from kairos.cluster.gateway import wire
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

DEADLINE_S = 10


def logged_channels(admin, since: float) -> list[str]:
    chunks = admin.ExportDecisionLog(admin_pb2.ExportDecisionLogRequest(
        since=wire.time_out(since), until=wire.time_out(time.time() + 5)), timeout=DEADLINE_S)
    return sorted(json.loads(line)["channel"] for chunk in chunks
                  for line in chunk.records.decode().splitlines())


def test_profiles_log_no_decisions_and_a_decide_still_logs_its_own():
    with serving() as (_, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        since = time.time() - 5
        event = pb.Event(customer_id="kei", type="complaint", channel="web",
                         time=wire.time_out(time.time()))
        event.attributes["topic"].CopyFrom(wire.value_out("delivery"))
        event.attributes["severity"].CopyFrom(wire.value_out("high"))
        stub.Ingest(event, timeout=DEADLINE_S)
        for _ in range(3):  # an agent opening the customer's page, and its live part
            profile = stub.GetProfile(pb.ProfileRequest(customer_id="kei", explain=True),
                                      timeout=DEADLINE_S)
        assert "web" in profile.current and profile.current["call_center"].decision_id
        assert logged_channels(admin, since) == []
        stub.Decide(pb.DecideRequest(customer_id="kei", channel="web"), timeout=DEADLINE_S)
        assert logged_channels(admin, since) == ["web"]
