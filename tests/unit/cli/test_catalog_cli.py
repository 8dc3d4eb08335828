"""`kairos catalog push --expect VERSION` and `kairos catalog rollback --to VERSION` send the
version they expect, so that a command run again after its answer was lost switches at most
once; a refusal reaches the operator as the gateway's FAILED_PRECONDITION."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster.cli.main import main
from kairos.v1 import admin_pb2, admin_pb2_grpc

from tests.unit.cli.test_drain import serve

__all__ = ["serve"]  # the fixture, used here too


class Admin(admin_pb2_grpc.AdminServiceServicer):
    """A gateway's AdminService that keeps the catalog requests it got, refusing a rollback
    to anything but 'v1'."""

    def __init__(self):
        self.requests = []

    def PutCatalog(self, request, context):
        self.requests.append(request)
        return admin_pb2.CatalogInfo(version="v2", name="omni-retail")

    def RollbackCatalog(self, request, context):
        self.requests.append(request)
        if request.to_version != "v1":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"the previous catalog is 'v1', not {request.to_version!r}")
        return admin_pb2.CatalogInfo(version="v1", name="omni-retail")


def test_push_sends_the_version_it_expects_running_and_without_it_none(serve, default_yaml,
                                                                       capsys):
    admin = Admin()
    push = ["--target", f"127.0.0.1:{serve(admin)}", "catalog", "push", str(default_yaml)]
    assert main(push + ["--expect", "v1"]) == 0
    assert main(push) == 0
    assert [r.expected_current_version for r in admin.requests] == ["v1", ""]
    assert "now runs catalog 'omni-retail' version v2" in capsys.readouterr().out


def test_rollback_names_the_version_it_goes_back_to(serve, capsys):
    admin = Admin()
    rollback = ["--target", f"127.0.0.1:{serve(admin)}", "catalog", "rollback"]
    assert main(rollback + ["--to", "v1"]) == 0
    assert "the cluster runs catalog 'omni-retail' version v1" in capsys.readouterr().out
    assert main(rollback + ["--to", "v0"]) == 1
    assert "FAILED_PRECONDITION: the previous catalog is 'v1', not 'v0'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # a bare rollback, sent twice, would toggle
        main(rollback)
    assert exited.value.code == 2 and "--to" in capsys.readouterr().err
    assert [r.to_version for r in admin.requests] == ["v1", "v0"]
