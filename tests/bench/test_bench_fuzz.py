"""The contract fuzzer runs (a short run against an in-process gateway, no Ray) and holds
the gateway to the contract: no INTERNAL or UNKNOWN, every acknowledged ledger event applied
exactly once, and deciding afterwards. The committed report comes from `python -m bench.fuzz`
against a real `kairos up`."""
from __future__ import annotations

import asyncio
import re

from bench.contract import methods
from bench.fuzz import Keys, failed, fuzz, markdown
from kairos.cluster.gateway.auth import Auth
from kairos.core.catalog import default_catalog_text

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.waiting import wait_until


def run_fuzz(n: int, catalog: str | None = None) -> dict:
    keys = Keys.fresh()
    gateway = InProcessGateway(Auth.load(keys.yaml()))
    try:
        if catalog is not None:
            version = gateway.run(gateway.client.backend.controller().put_catalog(catalog))
            wait_until(lambda: gateway.run(gateway.gateway.catalog()).version == version, 30,
                       "the gateway to take up the catalog")
        return asyncio.run(fuzz(f"127.0.0.1:{gateway.port}", keys, n=n, seed=7,
                                concurrency=8, progress=False))
    finally:
        gateway.close()


def test_a_short_fuzz_run_finds_the_contract_kept():
    results = run_fuzz(600)
    assert not results["forbidden"], results["forbidden"][:3]
    assert not results["ledger"]["problems"], results["ledger"]["problems"][:5]
    assert results["after"] is None
    assert not failed(results)
    # every RPC of the contract was called, and the ledger had events to check
    called = {name.split()[0] for name in results["statuses"]}
    assert {m.name for m in methods()} - called <= {"RollbackCatalog", "GetCatalog"}
    assert results["ledger"]["events_acknowledged_new"] > 0
    assert "| RPC, mode |" in markdown(results)


def test_vectors_are_fuzzed_on_a_catalog_that_declares_one():
    """DecideRequest.vectors: packed vectors of the declared size and not, NaN and extremes,
    undeclared keys; the contract holds as it does without them (the fuzzer's own
    RollbackCatalog may put the default catalog back midway: vectors then answer
    INVALID_ARGUMENT from the shards, as they should)."""
    catalog = re.sub(r'version: "[^"]*"', 'version: "fuzz-vectors"', default_catalog_text())
    catalog = catalog.replace("\ncontext:\n", "\ncontext:\n  embedding: {type: vector, size: 8}\n")
    catalog = catalog.replace("  predictors:\n",
                              "  predictors:\n    - {name: embedding, source: context}\n")
    results = run_fuzz(300, catalog)
    assert not results["forbidden"], results["forbidden"][:3]
    assert not failed(results) and results["after"] is None
