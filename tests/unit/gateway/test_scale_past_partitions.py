"""ScaleShards past the cluster's partition count is INVALID_ARGUMENT naming both (gateway
review, item E): a shard owns one partition at least, so ScaleShards(20) on 16 partitions left
4 shards owning nothing, each a process. Over real gRPC on the in-process backend (16
partitions)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from kairos.cluster.gateway.admin import AdminService
from kairos.v1 import admin_pb2, admin_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.unit.gateway.test_admin_deadlines import Aborted, Context

DEADLINE_S = 60


def test_more_shards_than_partitions_are_refused_and_as_many_are_not():
    with serving() as (_, channel):
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            admin.ScaleShards(admin_pb2.ScaleRequest(shards=17), timeout=DEADLINE_S)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(
            "shards: at most the cluster's 16 partitions (") and \
            refused.value.details().endswith("got 17")
        status = admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=DEADLINE_S)
        assert (len(status.shards), status.partitions) == (1, 16)
        assert admin.ScaleShards(admin_pb2.ScaleRequest(shards=16),
                                 timeout=DEADLINE_S).shards == 16
        status = admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=DEADLINE_S)
        assert [shard.partitions for shard in status.shards] == [1] * 16


def test_a_gateway_with_no_map_yet_asks_to_try_again():
    unmapped = SimpleNamespace(version=0, routes=lambda: pytest.fail("no map to read"))
    service = AdminService(SimpleNamespace(backend=None, node=None, client=unmapped, name="g"))
    with pytest.raises(Aborted) as aborted:
        asyncio.run(service.ScaleShards(admin_pb2.ScaleRequest(shards=2), Context(5)))
    assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no partition map yet" in aborted.value.details
