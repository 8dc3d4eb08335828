"""`kairos log export --since T --until T --out FILE`: the decision log through a gateway's
ExportDecisionLog (a key with the log:read or admin scope in KAIROS_API_KEY), written as
Parquet when FILE ends .parquet, else as JSON lines (cluster/evidence/records.py)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime, timezone
from typing import Iterator

from kairos.cluster.cli.remote import Remote
from kairos.cluster.evidence.records import (DecisionRecord, from_json, is_parquet,
                                             write_records)
from kairos.cluster.gateway import wire
from kairos.cluster.gateway.logexport import MAX_RECORDS as PAGE  # the most one call sends
from kairos.v1 import admin_pb2

EXPORT_TIMEOUT_S = 600.0
RESOLUTION_S = 1e-6  # of the times a call sends and takes (protobuf Timestamps carry ns)


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
                        help="the most decisions, up to 20,000 (default 0: all of them, "
                             "in as many calls as it takes)")


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
    truncated: list[bool] = []
    partial = f"{args.out}.partial"  # a call that fails half-way leaves no FILE behind
    # customers' profiles and decisions: the owner's only, as the store keeps them
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(partial, 0o600)  # one left by an earlier run keeps its mode otherwise
    records = exported(remote, args.since, args.until, args.channel, args.max_records,
                       truncated)
    written = write_records(records, partial, is_parquet(args.out))
    os.replace(partial, args.out)
    print(f"wrote {written} decision records to {args.out}")
    if any(truncated):
        print(f"more than {args.max_records:,} decisions matched: only the first were "
              f"written; raise --max-records (0: all)" if args.max_records else
              f"more decisions were logged within {RESOLUTION_S:g} s than one call sends: "
              f"some of them were not written", file=sys.stderr)
    return 0


def exported(remote: Remote, since: float, until: float, channel: str = "",
             max_records: int = 0, truncated: list[bool] | None = None
             ) -> Iterator[DecisionRecord]:
    """The decisions logged from `since` to `until`, oldest first. With `max_records` one
    call, at most that many; with 0, all of them, a page (the most the gateway sends a call)
    at a time: a page that was cut short gives the decisions before its last moment, and the
    next call starts at that moment. Each call that was cut short and could not go on (more
    than a page logged within one RESOLUTION_S) appends True to `truncated`."""
    truncated = [] if truncated is None else truncated
    if max_records:
        yield from _call(remote, since, until, channel, max_records, truncated)
        return
    start, after = since, -math.inf  # what was sent already: logged before `after`
    while True:
        cut: list[bool] = []
        records = [r for r in _call(remote, start, until, channel, PAGE, cut)
                   if r.time >= after]
        if not any(cut):
            yield from records
            return
        if not records:  # the look-back alone filled the page: go on without it
            start = after
            continue
        last = records[-1].time
        whole = [r for r in records if r.time < last]
        if whole:
            yield from whole
            after, start = last, last - RESOLUTION_S  # the wire's times may round either way
            continue
        # a page logged within one moment: send it, report the rest cut, and go on past it
        truncated.append(True)
        yield from records
        after = start = last + RESOLUTION_S


def _call(remote: Remote, since: float, until: float, channel: str, max_records: int,
          truncated: list[bool]) -> Iterator[DecisionRecord]:
    request = admin_pb2.ExportDecisionLogRequest(
        since=wire.time_out(since), until=wire.time_out(until), channel=channel,
        max_records=max_records)
    for chunk in remote.admin.ExportDecisionLog(request, timeout=EXPORT_TIMEOUT_S,
                                                metadata=remote.metadata):
        truncated.append(chunk.truncated)
        for line in chunk.records.splitlines():
            yield from_json(json.loads(line), "the gateway's answer")
