"""`kairos uplift --log FILE [--json]`: the models' uplift over the control group from a
decision log (`kairos log export`), per channel and per action (cluster/evidence/uplift.py).
Offline: it reads the file, nothing else."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kairos.cluster.evidence import uplift
from kairos.cluster.evidence.records import LogFormatError, read_records
from kairos.cluster.evidence.report import json_text


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("uplift", help="the models' uplift over the control group "
                                                "(from a decision log)")
    parser.add_argument("--log", required=True, type=Path,
                        help="decision log, JSON lines or .parquet (`kairos log export`)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        report = uplift.uplift(read_records(args.log))
    except LogFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.json:
        print(json_text(report), end="")
    elif not any(c["control_decisions"] for c in report["channels"].values()):
        print("no decision in this log was held back as control: give a channel a control "
              "share (catalog: channels.<name>.control) to measure the models' uplift")
    else:
        print(uplift.table(report))
    return 0
