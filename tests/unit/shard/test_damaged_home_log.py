"""A damaged home's log line names its customer by fingerprint (keyed), not by the home's
path, an unkeyed hash of the id that a list of e-mail addresses would find again in logs no
forget erases."""
from __future__ import annotations

import logging

from kairos.cluster.identity import fingerprint
from kairos.cluster.shard.outcomes import outcome_secret
from tests.unit.shard.test_homes import home_file, passivated
from tests.unit.shard.test_shard import T0, event, forget, p_of


def test_a_damaged_homes_log_line_names_the_fingerprint_not_the_path(compiled, tmp_path,
                                                                     caplog):
    s, _ = passivated(compiled, tmp_path, "ana@example.com")
    path = home_file(tmp_path, "ana@example.com")
    path.write_bytes(b"not a home")
    with caplog.at_level(logging.ERROR, logger="kairos.shard"):
        s.process([event("ana@example.com", "page_view", T0 + 1, category="home")])
    [line] = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert path.stem not in line and "ana@example.com" not in line
    assert fingerprint("ana@example.com", outcome_secret(s.store)) in line


def test_a_damaged_homes_refusal_does_not_name_the_path(compiled, tmp_path):
    """The refusal goes to the caller's gateway, which logs every UNAVAILABLE's detail."""
    s, _ = passivated(compiled, tmp_path, "ana@example.com")
    path = home_file(tmp_path, "ana@example.com")
    path.write_bytes(b"not a home")
    replies = s.process([event("ana@example.com", "page_view", T0 + 1, category="home"),
                         forget("ana@example.com")])[0]
    assert [r.status for r in replies] == ["unavailable"] * 2
    assert not [r for r in replies if path.stem in r.reason or str(tmp_path) in r.reason]
    assert replies[0].reason == f"this customer's stored profile (partition " \
                                f"{p_of('ana@example.com')}) is damaged"
