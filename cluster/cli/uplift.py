"""`kairos uplift --log FILE [--catalog CATALOG.yaml ...] [--json]`: the models' uplift over
the control group from a decision log (`kairos log export`), per channel and per action
(cluster/evidence/uplift.py). Offline: it reads the files, nothing else."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kairos.core.errors import CatalogError
from kairos.cluster.cli.replay import unreadable
from kairos.cluster.evidence import uplift
from kairos.cluster.evidence.records import LogFormatError, Unrepeated, read_records
from kairos.cluster.evidence.replay import Replayer, load_candidate
from kairos.cluster.evidence.report import json_text


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("uplift", help="the models' uplift over the control group "
                                                "(from a decision log)")
    parser.add_argument("--log", required=True, type=Path,
                        help="decision log, JSON lines or .parquet (`kairos log export`)")
    parser.add_argument("--catalog", action="append", type=Path, default=[],
                        help="a catalog the log's decisions were made by, through whose bound "
                             "(models.value.max_ratio) their conversion values are read; "
                             "repeat it for each version")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        catalogs, files = {}, {}
        for path in args.catalog:
            compiled, _ = load_candidate(path)
            if compiled.version in files:  # the later one would stand for the version unsaid
                print(f"error: --catalog {path} and {files[compiled.version]} are both version "
                      f"{compiled.version!r}: give each version once", file=sys.stderr)
                return 2
            files[compiled.version] = path
            catalogs[compiled.version] = Replayer(compiled, samples=1)
        unrepeated = Unrepeated(read_records(args.log))
        report = uplift.uplift(unrepeated, catalogs)
        report["repeated_records"] = unrepeated.repeats
    except (CatalogError, LogFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {unreadable(exc, args.log)}", file=sys.stderr)
        return 1
    if args.json:
        print(json_text(report), end="")
    elif not any(c["control_decisions"] for c in report["channels"].values()):
        print("no decision in this log was held back as control: give a channel a control "
              "share (catalog: channels.<name>.control) to measure the models' uplift")
    else:
        print(uplift.table(report))
    for warning in [] if args.json else unrepeated.warning():
        print(warning)
    if report["values_unbounded"] and not args.json:
        print(f"{report['values_unbounded']} conversion value(s) read as reported: no "
              f"--catalog of their version values their action (one of 1e12 sets the value "
              f"uplift)")
    return 0
