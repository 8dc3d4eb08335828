"""What a command says when no gateway answers at its target: `kairos up` is advice only for
a target on this machine (not, say, a preStop hook's Service kairos-gateway)."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster.cli import main as cli


class Unreached(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"


@pytest.mark.parametrize("target, hint", [("127.0.0.1:50051", True), ("localhost:50051", True),
                                          ("kairos-gateway:50051", False),
                                          ("10.0.0.7:50051", False)])
def test_kairos_up_is_advised_only_for_a_target_on_this_machine(monkeypatch, target, hint):
    monkeypatch.setattr(cli.targets, "answers", lambda target: False)
    said = cli.failed_call(target, Unreached())
    assert said.startswith(f"{cli.NOT_RUNNING}: no gateway answers at {target}")
    assert ("`kairos up`" in said) == hint
