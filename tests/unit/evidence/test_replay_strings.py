"""The evidence Replayer loads every logged profile into its one-row engine, interning its
strings: it frees the strings of the profiles it replaced between records (the review's M3),
so a log with more distinct free text than the string table's room replays as logged, not as
"<other>". The room is scaled down from 1,000,000."""
from __future__ import annotations

from kairos.cluster.evidence.records import DecisionRecord
from kairos.cluster.evidence.replay import REPLAY_CUSTOMER, Replayer, for_replay
from kairos.cluster.storage.blocks import export_block, pack
from kairos.core.catalog import default_catalog_text, load_catalog
from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine

T0 = 1_795_629_600.0


def test_a_log_with_more_distinct_strings_than_room_replays_as_logged():
    source = DecisionEngine(default_compiled())
    replayer = Replayer(for_replay(load_catalog(default_catalog_text(), "candidate")),
                        samples=1)
    strings = replayer.engine.compiled.strings
    strings.limit = len(strings.strings) + 100
    read = []
    for i in range(300):
        source.apply([source.encode_event(f"c{i}", "profile_updated", T0 + i,
                                          {"home_store": f"store-{i}"})])
        replayer.replay(DecisionRecord(f"d{i}", T0 + i, f"c{i}", "web", "hero", "v1", 0, {},
                                       {}, pack(export_block(source, [f"c{i}"])), (), ()))
        read.append(replayer.engine.profile(REPLAY_CUSTOMER, T0 + i)["attributes"]
                    ["home_store"])
    assert read == [f"store-{i}" for i in range(300)]  # before: "<other>" from the 101st on
    assert not strings.overflowed() and len(strings.strings) <= strings.limit
