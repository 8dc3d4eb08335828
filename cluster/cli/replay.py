"""`kairos replay --log FILE --catalog CANDIDATE.yaml [--out DIR]`: a candidate catalog judged
on a decision log, offline (no cluster): each logged decision re-decided by the candidate,
the off-policy estimates of what it would earn, and where it decides differently
(cluster/evidence/). Prints a summary; writes replay.json, replay.md and replay.png to --out."""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Callable

from kairos.core.errors import CatalogError
from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.evidence import evaluation, report
from kairos.cluster.evidence.records import LogFormatError, Unrepeated, read_records
from kairos.cluster.evidence.replay import DEFAULT_SAMPLES, MAX_SAMPLES, candidate_error, \
    load_candidate, replay

MAX_SEED = 2**64 - 1  # numpy's seed: an unsigned 64-bit number

MODELS = ("the candidate catalog's priors: offline no learner runs, so the candidate is "
          "judged as it would decide when it starts, before it learns (the logged decisions "
          "used the models learned by then)")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("replay", help="judge a candidate catalog on a decision log "
                                                "(offline)")
    parser.add_argument("--log", required=True, type=Path,
                        help="decision log, JSON lines or .parquet (`kairos log export`)")
    parser.add_argument("--catalog", required=True, type=Path, help="the candidate catalog")
    parser.add_argument("--out", type=Path, default=Path("replay"),
                        help="folder for replay.json, replay.md and replay.png (default: "
                             "./replay)")
    parser.add_argument("--samples", type=whole(MAX_SAMPLES, least=1),
                        default=DEFAULT_SAMPLES,
                        help=f"re-decisions per logged decision, 1..{MAX_SAMPLES} (default "
                             f"{DEFAULT_SAMPLES}: each probability within "
                             f"{candidate_error(DEFAULT_SAMPLES):.3f})")
    parser.add_argument("--limit", type=whole(sys.maxsize), default=0,
                        help="replay only the first N decisions (default 0: all)")
    parser.add_argument("--seed", type=whole(MAX_SEED), default=0,
                        help="of the candidate's draws, 0 to 2**64-1 (default 0)")


def whole(most: int, least: int = 0) -> Callable[[str], int]:
    """argparse's type of a whole number from `least` to `most`: numpy's seeds are unsigned
    64-bit (-1 ended in OverflowError after the log was read), islice's stop a C ssize_t."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be {least} to {most}, got {text}")
        return value
    return parse


def run(args: argparse.Namespace) -> int:
    if refused := report.unwritable(args.out):  # before the replay, not after its minutes
        print(f"error: --out {args.out}: {refused}", file=sys.stderr)
        return 1
    try:
        compiled, text = load_candidate(args.catalog)
        unrepeated = Unrepeated(read_records(args.log))
        records = itertools.islice(unrepeated, args.limit or None)
        replayed = list(replay(records, compiled, args.samples, args.seed))
    except (CatalogError, LogFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {unreadable(exc, args.log)}", file=sys.stderr)
        return 1
    evidence = {"log": str(args.log),
                "candidate": {"file": str(args.catalog), "name": compiled.catalog.name,
                              "version": compiled.version, "digest": catalog_digest(text)},
                "samples": args.samples, "candidate_error": candidate_error(args.samples),
                "models": MODELS, **evaluation.evaluate(replayed, args.seed)}
    evidence["warnings"] += unrepeated.warning()
    try:  # asked before the replay (unwritable), but a full disk or a race can still refuse
        written = report.write(evidence, args.out)
    except OSError as exc:
        where = exc.filename2 or exc.filename or "the report"  # a rename's: where to
        print(f"error: --out {args.out}: cannot write {where}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(report.summary(evidence))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def unreadable(exc: OSError, log: str) -> str:
    """What failed to read, for an OSError from a catalog or `log`: one raised reading a file
    already open names no file (an I/O error), nor does every library's a reason."""
    return f"{exc.filename or log}: {exc.strerror or exc}"
