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
