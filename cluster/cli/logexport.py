"""`kairos log export --since T --until T --out FILE`: the decision log through a gateway's
ExportDecisionLog (a key with the log:read or admin scope in KAIROS_API_KEY), written as
Parquet when FILE ends .parquet, else as JSON lines (cluster/evidence/records.py)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from typing import Iterator

from kairos.cluster.cli.remote import Remote
from kairos.cluster.evidence.records import (DecisionRecord, from_json, is_parquet,
                                             write_records)
from kairos.cluster.gateway import wire
from kairos.v1 import admin_pb2

EXPORT_TIMEOUT_S = 600.0


def add_command(commands, parents: list[argparse.ArgumentParser]) -> None:
    log = commands.add_parser("log", help="the decision log")
    log_commands = log.add_subparsers(dest="log_command", required=True)
    export = log_commands.add_parser(
        "export", parents=parents,
        help="write the decisions logged in a time range, with their outcomes, to a file")
    export.add_argument("--since", required=True, type=moment,
                        help="logged at or after: ISO 8601 (UTC unless it names a zone) or "
                             "epoch seconds")
    export.add_argument("--until", required=True, type=moment, help="logged at or before")
    export.add_argument("--out", required=True, metavar="FILE",
                        help="Parquet if it ends .parquet, else JSON lines")
    export.add_argument("--channel", default="", help="only this channel's decisions")
    export.add_argument("--max-records", type=int, default=0,
                        help="the most decisions (default the gateway's, 5,000; at most "
                             "20,000)")


def moment(text: str) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def run(args: argparse.Namespace) -> int:
    remote = Remote(args.target)
    request = admin_pb2.ExportDecisionLogRequest(
        since=wire.time_out(args.since), until=wire.time_out(args.until),
        channel=args.channel, max_records=max(args.max_records, 0))
    chunks = remote.admin.ExportDecisionLog(request, timeout=EXPORT_TIMEOUT_S,
                                            metadata=remote.metadata)
    truncated: list[bool] = []
    partial = f"{args.out}.partial"  # a call that fails half-way leaves no FILE behind
    written = write_records(_records(chunks, truncated), partial, is_parquet(args.out))
    os.replace(partial, args.out)
    print(f"wrote {written} decision records to {args.out}")
    if any(truncated):
        print("more decisions matched than were sent: narrow --since/--until, or raise "
              "--max-records", file=sys.stderr)
    return 0


def _records(chunks, truncated: list[bool]) -> Iterator[DecisionRecord]:
    for chunk in chunks:
        truncated.append(chunk.truncated)
        for line in chunk.records.splitlines():
            yield from_json(json.loads(line), "the gateway's answer")
