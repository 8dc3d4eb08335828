"""PutCatalog's evidence: a `kairos replay` report kept with the catalog version it is about,
shown back by GetCatalog, GetClusterStatus and `kairos status`, and switched with the
catalog on a rollback."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.gateway.admin import MAX_EVIDENCE_BYTES
from kairos.v1 import admin_pb2, admin_pb2_grpc

from tests.support.inprocess_gateway import serving


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A replay report on the candidate catalog, written by `kairos replay`."""
    folder = truth.write_files(tmp_path_factory.mktemp("evidence"), truth.log(
        5, truth.customers(np.random.default_rng(5), 40)))
    assert main(["replay", "--log", str(folder / "log.jsonl"), "--catalog",
                 str(folder / "candidate.yaml"), "--out", str(folder), "--samples", "8"]) == 0
    return folder


@pytest.fixture
def gateway():
    with serving() as (gateway, channel):
        yield gateway, admin_pb2_grpc.AdminServiceStub(channel)


def put(admin, yaml_text: str, evidence: str = "") -> admin_pb2.CatalogInfo:
    return admin.PutCatalog(admin_pb2.CatalogText(yaml=yaml_text, evidence_json=evidence),
                            timeout=60)


def test_the_evidence_stays_with_its_version_and_comes_back_on_rollback(gateway, report):
    _, admin = gateway
    evidence = (report / "replay.json").read_text()
    assert put(admin, truth.candidate_catalog(), evidence).version == "cand-1"
    assert admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=30).evidence_json == evidence
    status = admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=30)
    assert status.catalog_evidence.startswith("replay of 40 logged decisions, doubly robust: "
                                              "accept rate ")
    put(admin, truth.logging_catalog())  # a switch without evidence
    assert admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=30).evidence_json == ""
    assert admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(),
                                  timeout=30).catalog_evidence == ""
    admin.RollbackCatalog(admin_pb2.GetCatalogRequest(), timeout=60)
    assert admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=30).evidence_json == evidence


@pytest.mark.parametrize("evidence, says", [
    ("{not json", "not a replay report"),
    ('{"candidate": {"version": "cand-1"}}', "not a replay report (kairos replay's replay.json): KeyError: 'estimates'"),
    ("x" * (MAX_EVIDENCE_BYTES + 1), f"at most {MAX_EVIDENCE_BYTES} bytes"),
])
def test_evidence_that_is_no_report_is_invalid_argument(gateway, evidence, says):
    _, admin = gateway
    with pytest.raises(grpc.RpcError) as refused:
        put(admin, truth.candidate_catalog(), evidence)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("evidence_json: ")
    assert says in refused.value.details()


@pytest.mark.parametrize("edit", [
    lambda report: report.update(evaluated="INFINITY"),  # int() of an infinite float
    lambda report: next(iter(report["estimates"].values()))["dr"].update(value="HUGE"),
])
def test_a_report_of_numbers_past_a_float_is_invalid_argument(gateway, report, edit):
    """JSON numbers that overflow the report's headline (1e999 parses as infinity, an integer
    of 400 digits is past any float) were OverflowError: UNKNOWN (gateway review, item C)."""
    _, admin = gateway
    edited = json.loads((report / "replay.json").read_text())
    edit(edited)
    text = json.dumps(edited).replace('"INFINITY"', "1e999").replace('"HUGE"', "1" + "0" * 400)
    with pytest.raises(grpc.RpcError) as refused:
        put(admin, truth.candidate_catalog(), text)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith(
        "evidence_json: not a replay report (kairos replay's replay.json): OverflowError: ")


def test_evidence_about_another_version_is_refused_and_nothing_switches(gateway, report):
    _, admin = gateway
    before = admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=30).version
    with pytest.raises(grpc.RpcError) as refused:
        put(admin, truth.logging_catalog(), (report / "replay.json").read_text())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "about catalog version 'cand-1', not 'log-1'" in refused.value.details()
    assert admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=30).version == before


def test_evidence_about_another_text_of_the_version_is_refused_naming_both_digests(
        gateway, report):
    """The candidate edited after its replay, its version kept: the evidence was bound to the
    version string only and the edited text went live with the other text's estimates (review
    rev44 learning finding 6)."""
    _, admin = gateway
    edited = truth.candidate_catalog() + "\n# edited after the replay\n"
    with pytest.raises(grpc.RpcError) as refused:
        put(admin, edited, (report / "replay.json").read_text())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    said = refused.value.details()
    assert "another text of version 'cand-1'" in said
    assert catalog_digest(truth.candidate_catalog())[:64] in said
    assert catalog_digest(edited) in said and "run kairos replay" in said


def test_a_report_naming_no_digest_is_refused(gateway, report):
    _, admin = gateway
    old = json.loads((report / "replay.json").read_text())
    del old["candidate"]["digest"]
    with pytest.raises(grpc.RpcError) as refused:
        put(admin, truth.candidate_catalog(), json.dumps(old))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names no catalog digest" in refused.value.details()


def test_kairos_catalog_push_with_evidence_and_status(gateway, report, capsys):
    g, _ = gateway
    target = f"127.0.0.1:{g.port}"
    assert main(["catalog", "push", str(report / "candidate.yaml"), "--evidence",
                 str(report / "replay.json"), "--target", target]) == 0
    assert "with the evidence in" in capsys.readouterr().out
    assert main(["status", "--target", target]) == 0
    assert "catalog evidence: replay of 40 logged decisions" in capsys.readouterr().out
    assert main(["catalog", "push", str(report / "candidate.yaml"), "--evidence",
                 str(report / "missing.json"), "--target", target]) == 1
    assert "missing.json" in capsys.readouterr().err
