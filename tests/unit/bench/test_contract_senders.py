"""The contract fuzzer's ledger events are events a caller may send: a type no timer fires (nor
arms), from a channel the catalog lets send it; else the gateway refuses them, and the ledger's
exactly-once check would count refusals it did not mean (bench/contract.py)."""
from __future__ import annotations

import pytest

from bench.contract import Generator, Vocabulary
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.v1 import decision_pb2

pytestmark = pytest.mark.unit


def test_ledger_events_are_types_and_channels_a_caller_may_send():
    text = default_catalog_text()
    compiled = compiled_from_text(text)
    vocab = Vocabulary.of(compiled, text, shards=2, run="t")
    generator = Generator(vocab, seed=7)
    sent, allowed = compiled.event_sent, compiled.event_channels
    index = {name: i for i, name in enumerate(compiled.event_names)}
    seen = 0
    for _ in range(2000):
        ledger: list = []
        event = generator.message(decision_pb2.Event.DESCRIPTOR, "valid", ledger)
        if not ledger:
            continue
        seen += 1
        e = index[event.type]
        assert sent[e], event.type
        if event.channel in compiled.channel_names:
            assert allowed[e][compiled.channel_names.index(event.channel)], \
                (event.type, event.channel)
    assert seen > 100
