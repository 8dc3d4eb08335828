"""The decision log end to end: Decide and Respond through a real gRPC gateway, `kairos log
export` to Parquet and JSON lines, then ForgetCustomer and export again, over a directory
store and a Redis store (the in-process backend: the shards' logic without Ray)."""
from __future__ import annotations

import time

import grpc
import msgpack
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kairos.cluster.cli.main import main
from kairos.cluster.evidence.records import (DecisionRecord, OutcomeRecord, pack_decision,
                                             pack_outcome, read_records)
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.storage.blocks import unpack
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisStore
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.local_backend import LocalBackend

WEB, ADMIN, LOG = "web-key-0123456789", "admin-key-0123456789", "log-key-0123456789"
KEYS = f"""
keys:
  - {{key: {WEB}, name: web, channel: web, scopes: [decide, ingest, respond]}}
  - {{key: {ADMIN}, name: ops, scopes: [admin]}}
  - {{key: {LOG}, name: analyst, scopes: [log:read]}}
"""
GONE, KEPT = "forgotten-7f3c9a", "kept-2b1d84"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["directory", "redis"])
def gateway(request, tmp_path):
    backend = LocalBackend()
    prefix = f"declog{abs(hash(request.node.name))}"  # a store of the test's own
    backend.store = DirectoryStore(tmp_path / "store") if request.param == "directory" else \
        RedisStore(f"{request.getfixturevalue('redis_server').url}?prefix={prefix}")
    served = InProcessGateway(Auth.load(KEYS), backend)
    channel = grpc.insecure_channel(f"127.0.0.1:{served.port}")
    yield served, channel
    channel.close()
    served.close()


def export(port: int, out, monkeypatch, since: float, until: float, key: str = LOG) -> list:
    monkeypatch.setenv("KAIROS_API_KEY", key)
    assert main(["log", "export", "--target", f"127.0.0.1:{port}", "--since", str(since),
                 "--until", str(until), "--out", str(out)]) == 0
    return list(read_records(out))


def test_decide_respond_export_forget_export(gateway, tmp_path, monkeypatch, capsys):
    served, channel = gateway
    decisions = decision_pb2_grpc.DecisionServiceStub(channel)
    web = (("x-api-key", WEB),)
    began = time.time()
    sent = {}
    for customer in (GONE, KEPT):
        event = pb.Event(customer_id=customer, type="page_view", channel="web")
        event.attributes["category"].string_value = "home"
        decisions.Ingest(event, timeout=10, metadata=web)
        sent[customer] = decisions.Decide(pb.DecideRequest(
            customer_id=customer, channel="web", placement="hero"), timeout=10, metadata=web)
        decisions.Respond(pb.Outcome(
            decision_id=sent[customer].decision_id, customer_id=customer,
            action_id=sent[customer].actions[0].action_id, channel="web", outcome=pb.ACCEPT),
            timeout=10, metadata=web)
    until = time.time() + 1
    for name in ("log.parquet", "log.jsonl"):
        records = export(served.port, tmp_path / name, monkeypatch, began - 1, until)
        assert f"wrote 2 decision records to {tmp_path / name}" in capsys.readouterr().out
        by_customer = {r.customer_id: r for r in records}
        assert set(by_customer) == {GONE, KEPT}
        for customer, decision in sent.items():
            record = by_customer[customer]
            assert record.decision_id == decision.decision_id
            assert [(s.action_id, s.selection) for s in record.shown] == \
                [(a.action_id, a.selection_probability) for a in decision.actions]
            assert {s.action_id for s in record.shown} <= set(record.eligible)
            assert [(o.action_id, o.outcome) for o in record.outcomes] == \
                [(decision.actions[0].action_id, "accept")]
            assert unpack(record.profile)["ids"] == [customer]
    # a key with neither log:read nor admin is refused
    monkeypatch.setenv("KAIROS_API_KEY", WEB)
    assert main(["log", "export", "--target", f"127.0.0.1:{served.port}", "--since", "0",
                 "--until", "1", "--out", str(tmp_path / "refused.jsonl")]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err

    decisions.ForgetCustomer(pb.ForgetRequest(customer_id=GONE), timeout=10,
                             metadata=(("x-api-key", ADMIN),))
    for name in ("after.parquet", "after.jsonl"):
        records = export(served.port, tmp_path / name, monkeypatch, began - 1, until, ADMIN)
        assert [r.customer_id for r in records] == [KEPT]
        for record in records:  # nowhere, profile blocks included
            assert GONE not in repr(record) and GONE.encode() not in record.profile
    assert GONE not in (tmp_path / "after.jsonl").read_text()


def test_export_bounds_its_input(gateway):
    served, channel = gateway
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    key = (("x-api-key", LOG),)

    def refusal(**fields) -> str:
        request = admin_pb2.ExportDecisionLogRequest(**fields)
        with pytest.raises(grpc.RpcError) as caught:
            list(admin.ExportDecisionLog(request, timeout=10, metadata=key))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return caught.value.details()

    def at(seconds: float):
        return Timestamp(seconds=int(seconds))

    now = time.time()
    assert refusal(until=at(now)).startswith("since: required")
    assert refusal(since=at(now), until=at(now - 1)).startswith("until: must not be before")
    assert "31 days" in refusal(since=at(now - 40 * 86_400), until=at(now))
    assert refusal(since=at(now), until=at(now), max_records=20_001).startswith("max_records")
    assert refusal(since=at(now), until=at(now), channel="fax").startswith("channel")
    [chunk] = admin.ExportDecisionLog(admin_pb2.ExportDecisionLogRequest(
        since=at(now - 60), until=at(now)), timeout=10, metadata=key)
    assert (chunk.count, chunk.records, chunk.truncated) == (0, b"", False)


def test_pages_neither_repeat_nor_skip_and_late_outcomes_join(gateway, tmp_path, monkeypatch,
                                                               capsys):
    """A log (of a shard since scaled away) where seven decisions share one moment, busy
    with other outcomes, and one decision answered a day later: exported three at a time,
    every decision comes once, in the order logged, with its outcomes; `--until` at the last
    decision's own time ends the export."""
    from kairos.cluster.cli import logexport
    served, _ = gateway
    t0 = time.time() - 3 * 86_400
    made = [DecisionRecord(f"0-{k:x}.6b119032.H_0oRzXZ", t0, f"c{k}", "web", "hero", "v1", 1,
                           {}, {}, b"", ("a1",), ()) for k in range(9)]
    noise = [OutcomeRecord(made[1].decision_id, "c1", "a1", "impression", 0.0, t0 + k / 1e3)
             for k in range(300)]
    late = OutcomeRecord(made[0].decision_id, "c0", "a1", "convert", 25.0, t0 + 86_400)
    log = served.gateway.backend.store.decision_log("kairos-shard-gone")
    log.append(packed(made[:7], t0) + packed(made[7:], t0 + 1) + packed(noise, t0 + 2) +
               packed([late], t0 + 86_400))
    monkeypatch.setattr(logexport, "page", lambda: 3)
    records = export(served.port, tmp_path / "log.jsonl", monkeypatch, t0, t0 + 1)
    assert [r.decision_id for r in records] == [r.decision_id for r in made]
    assert records[0].outcomes == (late,) and len(records[1].outcomes) == 300
    assert "left out" not in capsys.readouterr().err


def packed(records, at: float) -> list:
    return [(at, r.customer_id, msgpack.packb(
        (pack_decision if isinstance(r, DecisionRecord) else pack_outcome)(r),
        use_bin_type=True)) for r in records]


def test_a_page_token_the_export_did_not_give_is_refused(gateway):
    served, channel = gateway
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    now = Timestamp(seconds=int(time.time()))
    for token in ("not base64 !", "gqNrZXk", "x" * 20_000):
        with pytest.raises(grpc.RpcError) as caught:
            list(admin.ExportDecisionLog(admin_pb2.ExportDecisionLogRequest(
                since=now, until=now, page_token=token), timeout=10,
                metadata=(("x-api-key", LOG),)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("page_token: ")
