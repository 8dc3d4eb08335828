"""`kairos log export`'s times and arguments (the export itself runs against a real gateway in
tests/cluster/test_decision_log.py)."""
from __future__ import annotations

import argparse

import pytest

from kairos.cluster.cli.logexport import moment
from kairos.cluster.cli.main import main, parser


def test_times_are_epoch_seconds_or_iso_8601_in_utc_unless_they_name_a_zone():
    assert moment("1795629600") == moment("1795629600.0") == 1_795_629_600.0
    assert moment("2026-11-25T18:00:00") == moment("2026-11-25T18:00:00Z") == 1_795_629_600.0
    assert moment("2026-11-25T19:00:00+01:00") == 1_795_629_600.0
    with pytest.raises(argparse.ArgumentTypeError, match="'yesterday' is neither"):
        moment("yesterday")


def test_the_command_takes_its_range_and_file(capsys):
    args = parser(50051).parse_args(["log", "export", "--since", "2026-11-25", "--until",
                                     "1795629600", "--out", "x.parquet", "--channel", "web"])
    assert (args.command, args.log_command, args.since, args.until, args.out, args.channel) == \
        ("log", "export", 1_795_564_800.0, 1_795_629_600.0, "x.parquet", "web")
    with pytest.raises(SystemExit):
        main(["log", "export", "--since", "0", "--out", "x.jsonl"])  # no --until
    assert "--until" in capsys.readouterr().err


class Gateway:
    """ExportDecisionLog as the gateway answers it, over records in memory: a closed range,
    oldest first, at most `max_records`, the last chunk saying whether more matched."""

    def __init__(self, times: list[float]):
        from kairos.cluster.evidence.records import DecisionRecord
        self.records = [DecisionRecord(f"d{i}", t, f"c{i}", "web", "hero", "1", 1, {}, {}, b"",
                                       (), ()) for i, t in enumerate(times)]
        self.calls = 0
        self.admin = self
        self.metadata = ()

    def ExportDecisionLog(self, request, timeout, metadata):
        import json

        from kairos.cluster.evidence.records import to_json
        from kairos.cluster.gateway.wire import time_in
        from kairos.v1 import admin_pb2
        self.calls += 1
        since, until = time_in("since", request.since), time_in("until", request.until)
        matched = [r for r in self.records if since <= r.time <= until]
        sent = matched[:request.max_records]
        yield admin_pb2.DecisionLogChunk(
            records="".join(json.dumps(to_json(r)) + "\n" for r in sent).encode(),
            count=len(sent), truncated=len(matched) > len(sent))


def test_an_export_of_more_than_one_call_sends_goes_on_from_each_pages_last_moment(monkeypatch):
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "PAGE", 3)
    times = [100.0 + i * 0.5 for i in range(20)] + [110.0, 110.0]  # two share the split point
    gateway = Gateway(times)
    truncated: list[bool] = []
    got = list(logexport.exported(gateway, 100.0, 120.0, truncated=truncated))
    assert [r.decision_id for r in got] == [r.decision_id for r in gateway.records]
    # each call but the last gives the page's decisions before its last moment (2 of 3 here)
    assert not any(truncated) and gateway.calls == 11
    # with max_records, one call and what it could send
    truncated.clear()
    assert len(list(logexport.exported(gateway, 100.0, 120.0, max_records=2,
                                       truncated=truncated))) == 2
    assert truncated == [True]


def test_decisions_sharing_a_millisecond_beyond_a_page_are_reported_cut(monkeypatch):
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "PAGE", 3)
    truncated: list[bool] = []
    gateway = Gateway([49.5, 50.0, 50.0, 50.0, 50.0, 50.0, 50.5, 50.75])
    got = list(logexport.exported(gateway, 49.0, 51.0, truncated=truncated))
    # the page at 50.0 is sent as far as it goes; the export goes on after that moment
    assert [r.time for r in got] == [49.5, 50.0, 50.0, 50.0, 50.5, 50.75]
    assert truncated == [True]


def test_an_export_is_its_owners_only(tmp_path, monkeypatch):
    """It holds customers' profiles as their decisions saw them, which the store keeps 0600:
    the export was written by the umask (0644)."""
    import argparse
    import os
    import stat
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "Remote", lambda target: Gateway([100.0, 101.0]))
    out = tmp_path / "log.jsonl"
    (tmp_path / "log.jsonl.partial").write_text("left by an earlier run")
    os.chmod(tmp_path / "log.jsonl.partial", 0o644)
    args = argparse.Namespace(target="127.0.0.1:1", out=str(out), since=99.0, until=102.0,
                              channel=None, max_records=0)
    assert logexport.run(args) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(out.read_text().splitlines()) == 2
