"""A Decide that records its impression journals an Outcome record per action shown, in its
request round (review rev41 d-last, finding 1): 300 decides of 1 KB ids on a placement of 200
long-named actions made a 74 MB frame. Past MAX_FRAME the round failed, the shard was rebuilt,
and every caller in the round was answered UNAVAILABLE on every retry. The host now counts a
recording decide's possible impressions into the round's bytes (rounds.py) and splits the
round. The frame limit and the round's bytes are lowered here (a quarter, as by default) so the
scenario takes dozens of customers, not hundreds."""
from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from kairos.core.compiler import compiled_from_text
from kairos.cluster.protocol import Ok
from kairos.cluster.storage import frames
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_round_fires import counted_rounds, long_id
from tests.unit.shard.test_shard import decide
from tests.unit.shard.test_shard_host import run

BUDGET = 64 << 10  # a quarter of the lowered MAX_FRAME, as SHARD_ROUND_BYTES by default
SMALL = Path(__file__).parents[1] / "core" / "data" / "small.yaml"


def shown_on_sidebar(k: int) -> str:
    """The small catalog with its sidebar showing `k` actions more, of 195-character ids."""
    actions = "".join(
        f"  - id: a{i:03d}_{'x' * 190}\n    group: sell\n    purpose: service\n"
        f"    channels:\n      web: {{treatment: t{i:03d}, placements: [sidebar]}}\n"
        f"    value: 1\n" for i in range(k))
    text = SMALL.read_text()
    for old, new in [("sidebar: {top_k: 3}", f"sidebar: {{top_k: {k}}}"),
                     ("actions:\n", "actions:\n" + actions),
                     ("one_per_group: true", "one_per_group: false")]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def small_frames(monkeypatch):
    monkeypatch.setattr(frames, "MAX_FRAME", 256 << 10)


def test_a_round_of_decides_recording_impressions_is_split_under_the_frame_limit(
        tmp_path, small_frames):
    """30 decides of 1 KB ids (31 KB, under the round's 64 KB) each record 20 impressions
    (some 750 KB of Outcome records, past the 256 KB frame limit): the round failed whole."""
    compiled = compiled_from_text(shown_on_sidebar(20))
    decides = [decide(long_id(i), "web", "sidebar", record_impression=True) for i in range(30)]
    assert len(msgpack.packb(decides)) < BUDGET

    async def test(host):
        shard = host.shard
        rounds = counted_rounds(host)
        replies = await host.handle("a", 0, decides, [0] * len(decides))
        assert all(type(r) is Ok for r in replies), replies[0]
        assert all(len(r.value.actions) == 20 for r in replies)
        assert host.shard is shard  # no rebuild
        assert shard.counts["outcomes"] == 30 * 20
        assert len(rounds) > 1 and sum(rounds) == 30
    run(compiled, DirectoryStore(tmp_path, fsync=False), test, round_bytes=BUDGET)


def test_a_decide_whose_impressions_alone_pass_the_budget_is_invalid(tmp_path):
    """60 impressions of a 1 KB id and 195-character action ids: some 75 KB of Outcome records
    for one decide, past a 64 KB round; a decide that records none is served, the shard kept."""
    compiled = compiled_from_text(shown_on_sidebar(60))

    async def test(host):
        shard = host.shard
        replies = await host.handle("a", 0, [
            decide(long_id(0), "web", "sidebar", record_impression=True),
            decide(long_id(1), "web", "sidebar")], [0, 0])
        assert replies[0].status == "invalid" and replies[0].field == "request"
        assert "for the impressions it records, over a round's 65536-byte budget " \
               "(SHARD_ROUND_BYTES)" in replies[0].reason
        assert type(replies[1]) is Ok and host.shard is shard
    run(compiled, DirectoryStore(tmp_path, fsync=False), test, round_bytes=BUDGET)
