"""`kairos replay --log FILE --catalog CANDIDATE.yaml [--out DIR]`: a candidate catalog judged
on a decision log, offline (no cluster): each logged decision re-decided by the candidate,
the off-policy estimates of what it would earn, and where it decides differently
(cluster/evidence/). Prints a summary; writes replay.json, replay.md and replay.png to --out."""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from kairos.core.errors import CatalogError
from kairos.cluster.control.catalog_identity import catalog_digest
from kairos.cluster.evidence import evaluation, report
from kairos.cluster.evidence.records import LogFormatError, Unrepeated, read_records
from kairos.cluster.evidence.replay import DEFAULT_SAMPLES, MAX_SAMPLES, candidate_error, \
    load_candidate, replay

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
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"re-decisions per logged decision, 1..{MAX_SAMPLES} (default "
                             f"{DEFAULT_SAMPLES}: each probability within "
                             f"{candidate_error(DEFAULT_SAMPLES):.3f})")
    parser.add_argument("--limit", type=int, default=0,
                        help="replay only the first N decisions (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="of the candidate's draws")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.samples <= MAX_SAMPLES:
        print(f"error: --samples must be between 1 and {MAX_SAMPLES}", file=sys.stderr)
        return 2
    if args.limit < 0:
        print("error: --limit must be 0 (all) or more", file=sys.stderr)
        return 2
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
    written = report.write(evidence, args.out)
    print(report.summary(evidence))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def unreadable(exc: OSError, log: str) -> str:
    """What failed to read, for an OSError from a catalog or `log`: one raised reading a file
    already open names no file (an I/O error), nor does every library's a reason."""
    return f"{exc.filename or log}: {exc.strerror or exc}"
