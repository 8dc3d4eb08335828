"""A key being rotated holds one share (task A, item 2): the entries of one name and the same
grants (scopes and channel), the old and the new secret of a key, are one key with one label,
the name; `auth._labels` gave each entry a label of its own, so a key in rotation counted as
two keys with two shares of GATEWAY_INFLIGHT_LIMIT. Entries of one name that grant otherwise
are keys of their own, as before (test_inflight_fair_share's names that repeat). Over real
gRPC on the in-process backend, its shard held stuck, at the limit of 40 (the kept line 35)."""
from __future__ import annotations

import pytest

from kairos.cluster.gateway import calls
from kairos.cluster.gateway.auth import Auth

from tests.support.waiting import wait_until
from tests.unit.gateway.test_inflight_fair_share import LIMIT, Rig, refused

ROTATED = """keys:
  - {key: 'web-old-secret-0123456789ab', name: web, channel: web, scopes: [ingest, decide]}
  - {key: 'app-ingest-decide-0123456789', name: app, scopes: [ingest, decide]}
  - {key: 'web-new-secret-0123456789ab', name: web, channel: web, scopes: [decide, ingest]}
"""
OLD = (("x-api-key", "web-old-secret-0123456789ab"),)
NEW = (("x-api-key", "web-new-secret-0123456789ab"),)
APP = (("x-api-key", "app-ingest-decide-0123456789"),)


def _labels(text: str) -> list[str | None]:
    """The labels of the keys `text` configures, in its order."""
    return [key.label for _, key in Auth.load(text)._keys]


def test_two_secrets_of_one_name_and_grants_hold_one_share(monkeypatch):
    """The app key holds 2; the web key's old secret floods until refused: 28, past its share
    of 17 (35 split among 2 keys) once the gateway is past 30. Its new secret is refused
    too, the same key (before: "web (keys[2])", holding nothing, got a call in, and kept
    getting one while the old secret's calls held the share of a key of their own)."""
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    rig = Rig(ROTATED)
    try:
        rig.gate(False)
        rig.hold(APP, 2)
        held, message = rig.flood(OLD)
        assert len(held) == 28
        new = rig.decide(NEW)
        wait_until(lambda: new.done() or rig.held()[0] == 31, 10, "the new secret's Decide "
                   "refused, or in flight")
        assert rig.held() == (30, {"web": 28, "app": 2})
        assert "28 of them of key 'web': past 30 in flight" in refused(new.result)
        assert "28 of them of key 'web'" in message, message
        rig.gate(True)
        assert [call.result(10).channel for call in held] == ["web"] * 28
    finally:
        rig.close()


@pytest.mark.parametrize("text, labels", [
    (ROTATED, ["web", "app", "web"]),
    # one key in rotation is a gateway's one key: the whole limit, no shares
    ("""keys:
  - {key: 'web-old-secret-0123456789ab', name: web, scopes: [ingest]}
  - {key: 'web-new-secret-0123456789ab', name: web, scopes: [ingest]}
""", [None, None]),
    # another channel, other scopes: keys of their own, each labelled by its first entry
    ("""keys:
  - {key: 'web-old-secret-0123456789ab', name: web, channel: web, scopes: [ingest]}
  - {key: 'web-any-channel-0123456789a', name: web, scopes: [ingest]}
  - {key: 'web-new-secret-0123456789ab', name: web, channel: web, scopes: [ingest]}
  - {key: 'web-decides-too-0123456789a', name: web, channel: web, scopes: [ingest, decide]}
""", ["web (keys[0])", "web (keys[1])", "web (keys[0])", "web (keys[3])"]),
    # a name read as another's label: every key labelled by its first entry
    ("""keys:
  - {key: 'web-old-secret-0123456789ab', name: web, channel: web, scopes: [ingest]}
  - {key: 'web-any-channel-0123456789a', name: web, scopes: [ingest]}
  - {key: 'odd-ingest-decide-0123456789', name: 'web (keys[1])', scopes: [ingest]}
  - {key: 'web-new-secret-0123456789ab', name: web, channel: web, scopes: [ingest]}
""", ["web (keys[0])", "web (keys[1])", "web (keys[1]) (keys[2])", "web (keys[0])"]),
], ids=["rotated", "one key rotated", "other grants", "a name read as a label"])
def test_entries_of_one_name_and_grants_have_one_label(text, labels):
    assert _labels(text) == labels


def test_entries_made_one_key_are_logged_at_load(caplog):
    """Review of ba35e61, L2: entries merged without a word, so a name reused by mistake for
    another client (the same grants) took one share silently; the load now says which."""
    with caplog.at_level("INFO", logger="kairos.gateway"):
        Auth.load(ROTATED)
    merged = [r.getMessage() for r in caplog.records if "are one key" in r.getMessage()]
    assert merged == ["keys[0], keys[2] are one key, 'web' (one share of the in-flight limit, "
                      "one bound on its streams): one name, the same scopes and channel"]
