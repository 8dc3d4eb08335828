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
    in order, a page of at most `max_records`, the last chunk naming the next page and the
    outcomes it left out."""

    def __init__(self, times: list[float], outcomes_cut: int = 0):
        from kairos.cluster.evidence.records import DecisionRecord
        self.records = [DecisionRecord(f"d{i}", t, f"c{i}", "web", "hero", "1", 1, {}, {}, b"",
                                       (), ()) for i, t in enumerate(times)]
        self.outcomes_cut = outcomes_cut
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
        start = int(request.page_token or 0)
        sent = matched[start:start + request.max_records]
        more = start + len(sent) < len(matched)
        yield admin_pb2.DecisionLogChunk(
            records="".join(json.dumps(to_json(r)) + "\n" for r in sent).encode(),
            count=len(sent), truncated=more,
            next_page_token=str(start + len(sent)) if more else "",
            outcomes_cut=self.outcomes_cut)


def test_an_export_of_more_than_one_call_sends_asks_for_each_next_page(monkeypatch):
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "page", lambda: 3)
    gateway = Gateway([100.0] * 7 + [100.5 + i for i in range(13)])  # 7 share a moment
    shortfall = logexport.Shortfall()
    got = list(logexport.exported(gateway, 100.0, 120.0, shortfall=shortfall))
    assert [r.decision_id for r in got] == [r.decision_id for r in gateway.records]
    assert shortfall == logexport.Shortfall() and gateway.calls == 7
    # with max_records, one call and what it could send
    assert len(list(logexport.exported(gateway, 100.0, 120.0, max_records=2,
                                       shortfall=shortfall))) == 2
    assert shortfall.more


def test_the_command_says_what_it_left_out(tmp_path, monkeypatch, capsys):
    import argparse
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "Remote", lambda target: Gateway([100.0, 101.0], 3))
    args = argparse.Namespace(target="127.0.0.1:1", out=str(tmp_path / "log.jsonl"),
                              since=99.0, until=102.0, channel="", max_records=1)
    assert logexport.run(args) == 0
    err = capsys.readouterr().err
    assert "more than 1 decisions matched" in err and "3 outcomes were left out" in err


@pytest.mark.parametrize("name", ["log.jsonl", "log.parquet"])
def test_an_export_is_its_owners_only_and_on_disk(tmp_path, monkeypatch, name):
    """It holds customers' profiles as their decisions saw them, which the store keeps 0600:
    the export was written by the umask (0644). It is synced before its name is."""
    import argparse
    import os
    import stat
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "Remote", lambda target: Gateway([100.0, 101.0]))
    out = tmp_path / name
    args = argparse.Namespace(target="127.0.0.1:1", out=str(out), since=99.0, until=102.0,
                              channel="", max_records=0)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    assert logexport.run(args) == 0
    from kairos.cluster.evidence.records import read_records
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(list(read_records(out))) == 2
    # written to disk under a name of its own before it is renamed whole, and the rename too
    [partial, folder] = synced
    assert partial.startswith(f"{tmp_path}/.{name}.") and partial.endswith(".partial")
    assert folder == str(tmp_path) and sorted(tmp_path.iterdir()) == [out]


def test_an_export_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    import argparse

    import grpc
    from kairos.cluster.cli import logexport

    class Failing(Gateway):
        def ExportDecisionLog(self, request, timeout, metadata):
            yield from super().ExportDecisionLog(request, timeout, metadata)
            raise grpc.RpcError("the gateway went away")
    monkeypatch.setattr(logexport, "Remote", lambda target: Failing([100.0, 101.0]))
    args = argparse.Namespace(target="127.0.0.1:1", out=str(tmp_path / "log.jsonl"),
                              since=99.0, until=102.0, channel="", max_records=0)
    with pytest.raises(grpc.RpcError):
        logexport.run(args)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial customers


@pytest.mark.parametrize("text", ["1e20", "-1e12", "0001-01-01T00:00+01:00"])
def test_a_time_a_timestamp_cannot_hold_is_refused_as_an_argument(text):
    """It reached the gateway's wire conversion and ended in a traceback."""
    with pytest.raises(argparse.ArgumentTypeError, match="years 1 to 9999"):
        moment(text)
    assert moment("9999-12-31T23:59:59Z") == 253_402_300_799.0


def test_a_partial_file_planted_as_a_link_is_not_followed(tmp_path, monkeypatch):
    """In a folder others may write, a link named FILE.partial had the export truncate its
    target and change its mode: the export makes a file of a name of its own instead."""
    import os
    import stat
    from kairos.cluster.cli import logexport
    monkeypatch.setattr(logexport, "Remote", lambda target: Gateway([100.0, 101.0]))
    victim = tmp_path / "victim"
    victim.write_text("someone else's")
    os.chmod(victim, 0o644)
    out = tmp_path / "log.jsonl"
    os.symlink(victim, f"{out}.partial")
    args = argparse.Namespace(target="127.0.0.1:1", out=str(out), since=99.0, until=102.0,
                              channel="", max_records=0)
    assert logexport.run(args) == 0
    assert victim.read_text() == "someone else's" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not out.is_symlink() and len(out.read_text().splitlines()) == 2


def test_two_exports_to_one_file_do_not_take_each_others(tmp_path, monkeypatch):
    """With one fixed partial name the second export deleted the first's file under way, and
    the first renamed the second's half-written one into FILE."""
    import threading

    from kairos.cluster.cli import logexport
    first_writing, second_done = threading.Event(), threading.Event()

    class Slow(Gateway):
        def ExportDecisionLog(self, request, timeout, metadata):
            first_writing.set()
            second_done.wait(30)  # the second export runs while this one writes
            yield from super().ExportDecisionLog(request, timeout, metadata)
    out = tmp_path / "log.jsonl"
    args = argparse.Namespace(target="127.0.0.1:1", out=str(out), since=99.0, until=102.0,
                              channel="", max_records=0)
    monkeypatch.setattr(logexport, "Remote", lambda target: Slow([100.0, 101.0]))
    results = []
    first = threading.Thread(target=lambda: results.append(logexport.run(args)))
    first.start()
    assert first_writing.wait(30)
    monkeypatch.setattr(logexport, "Remote", lambda target: Gateway([100.0]))
    assert logexport.run(args) == 0 and len(out.read_text().splitlines()) == 1
    second_done.set()
    first.join(30)
    assert results == [0] and len(out.read_text().splitlines()) == 2  # whole, the last one
    assert sorted(tmp_path.iterdir()) == [out]
