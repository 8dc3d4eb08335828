"""The contract fuzzer runs (a short run against an in-process gateway, no Ray) and holds
the gateway to the contract: no INTERNAL or UNKNOWN, every acknowledged ledger event applied
exactly once, and deciding afterwards. The committed report comes from `python -m bench.fuzz`
against a real `kairos up`."""
from __future__ import annotations

import asyncio

from bench.contract import methods
from bench.fuzz import Keys, failed, fuzz, markdown
from kairos.cluster.gateway.auth import Auth

from tests.support.inprocess_gateway import InProcessGateway


def test_a_short_fuzz_run_finds_the_contract_kept():
    keys = Keys.fresh()
    gateway = InProcessGateway(Auth.load(keys.yaml()))
    try:
        results = asyncio.run(fuzz(f"127.0.0.1:{gateway.port}", keys, n=600, seed=7,
                                   concurrency=8, progress=False))
    finally:
        gateway.close()
    assert not results["forbidden"], results["forbidden"][:3]
    assert not results["ledger"]["problems"], results["ledger"]["problems"][:5]
    assert results["after"] is None
    assert not failed(results)
    # every RPC of the contract was called, and the ledger had events to check
    called = {name.split()[0] for name in results["statuses"]}
    assert {m.name for m in methods()} - called <= {"RollbackCatalog", "GetCatalog"}
    assert results["ledger"]["events_acknowledged_new"] > 0
    assert "| RPC, mode |" in markdown(results)
