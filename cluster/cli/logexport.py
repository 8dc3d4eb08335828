"""`kairos log export --since T --until T --out FILE`: the decision log through a gateway's
ExportDecisionLog (a key with the log:read or admin scope in KAIROS_API_KEY), written as
Parquet when FILE ends .parquet, else as JSON lines (cluster/evidence/records.py)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from kairos.cluster import whole_files
from kairos.cluster.cli.remote import Remote
from kairos.cluster.evidence.records import (OUTCOMES_PER_DECISION, DecisionRecord, from_json,
                                             is_parquet, write_records)
from kairos.cluster.gateway import wire
from kairos.v1 import admin_pb2

EXPORT_TIMEOUT_S = 600.0
# a protobuf Timestamp's range (0001-01-01 to 9999-12-31T23:59:59 UTC), which wire.py's
# time_out refuses past
EARLIEST, LATEST = -62_135_596_800.0, 253_402_300_799.0


def page() -> int:
    """The most one call sends. Imported when asked: the gateway's module imports
    kairos.cluster.settings, which the command line imports only in main() (main.py)."""
    from kairos.cluster.gateway.logexport import MAX_RECORDS
    return MAX_RECORDS


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
    export.add_argument("--max-records", type=max_records, default=0,
                        help="the most decisions, up to 20,000 (default 0: all of them, "
                             "in as many calls as it takes)")


def max_records(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= page():
        raise argparse.ArgumentTypeError(f"must be 0 (all) to {page():,}, got {text}")
    return value


def moment(text: str) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 time (UTC when it names no zone),
    within what a protobuf Timestamp holds (years 1 to 9999, UTC)."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp()
    if not (math.isfinite(seconds) and EARLIEST <= seconds <= LATEST):
        raise argparse.ArgumentTypeError(f"must be a time in years 1 to 9999 UTC, got {text!r}")
    return seconds


@dataclass
class Shortfall:
    """What an export left out: decisions past --max-records, and outcomes past a decision's
    bound (records.py's OUTCOMES_PER_DECISION)."""
    more: bool = False
    outcomes_cut: int = 0


def run(args: argparse.Namespace) -> int:
    remote = Remote(args.target)
    shortfall = Shortfall()
    out_path = Path(args.out).absolute()
    with contextlib.ExitStack() as stack:
        try:
            # said before anything streams, as mkstemp says a folder FILE cannot be made in
            # (missing, not this user's): a folder named as FILE failed only at the rename,
            # after the export. is_dir raises stat's EACCES (pathlib passes only ENOENT and
            # its kin): FILE in a folder this user cannot enter, said as mkstemp's
            if out_path.is_dir() or args.out.endswith(os.sep):
                print(f"error: --out {args.out}: a folder: name the file to write",
                      file=sys.stderr)
                return 1
            # a call that fails half-way leaves no FILE behind (whole_files); customers'
            # profiles and decisions: the owner's only (0600), as the store keeps them
            out = stack.enter_context(whole_files.replacing(out_path, sync=True))
        except OSError as exc:
            print(f"error: --out {args.out}: cannot write in {out_path.parent}: "
                  f"{exc.strerror}", file=sys.stderr)
            return 1
        records = exported(remote, args.since, args.until, args.channel, args.max_records,
                           shortfall)
        written = write_records(records, out, is_parquet(args.out))
    from kairos.cluster.storage.frames import fsync_directory  # see page()
    fsync_directory(out_path.parent)  # where the name is, a link's too
    print(f"wrote {written} decision records to {args.out}")
    if shortfall.more:
        print(f"more than {args.max_records:,} decisions matched: only the first were "
              f"written; raise --max-records (0: all)", file=sys.stderr)
    if shortfall.outcomes_cut:
        print(f"{shortfall.outcomes_cut:,} outcomes were left out: past a decision's "
              f"{OUTCOMES_PER_DECISION} outcomes (impressions aside), only the first were "
              f"joined", file=sys.stderr)
    return 0


def exported(remote: Remote, since: float, until: float, channel: str = "",
             max_records: int = 0, shortfall: Shortfall | None = None
             ) -> Iterator[DecisionRecord]:
    """The decisions logged from `since` to `until`, in the order they were logged. With
    `max_records`, one call of at most that many; with 0, all of them, a page (the most the
    gateway sends a call) at a time, each call asking for the page after the one before."""
    shortfall = Shortfall() if shortfall is None else shortfall
    token = ""
    while True:
        request = admin_pb2.ExportDecisionLogRequest(
            since=wire.time_out(since), until=wire.time_out(until), channel=channel,
            max_records=max_records or page(), page_token=token)
        for chunk in remote.admin.ExportDecisionLog(request, timeout=EXPORT_TIMEOUT_S,
                                                    metadata=remote.metadata):
            for line in chunk.records.splitlines():
                yield from_json(json.loads(line), "the gateway's answer")
            shortfall.outcomes_cut += chunk.outcomes_cut
            token = chunk.next_page_token  # the last chunk's is the one that counts
        if max_records or not token:
            shortfall.more = bool(token)
            return
