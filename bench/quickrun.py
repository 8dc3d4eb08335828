"""A short harness's command line and report: `--quick` (the test suite's run) and `--out`,
the report stamped with its provenance and written as <bench>-<time>[-quick].json and .md,
the Markdown printed, and a JSON summary as the last line (tests read it)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from . import provenance

RESULTS = Path(__file__).parent / "results"


def main(bench: str, description: str, measure: Callable[[bool], dict[str, Any]],
         markdown: Callable[[dict[str, Any]], str],
         summary: Callable[[dict[str, Any]], dict[str, Any]],
         argv: list[str] | None = None) -> None:
    """Run `measure(quick)` (the report's own fields), write its report, print the summary
    line: the report's path, the run's seconds and `summary(report)`."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{bench}", description=description)
    parser.add_argument("--quick", action="store_true", help="seconds: the test suite's run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    measured = measure(args.quick)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = {"bench": bench, "time": stamp, "quick": args.quick,
              "command": f"python -m bench.{bench}" + (" --quick" if args.quick else ""),
              "seconds": round(time.perf_counter() - began, 1),
              "load_average_1m": round(os.getloadavg()[0], 2), **measured}
    provenance.stamp(report)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{bench}-{stamp}{'-quick' if args.quick else ''}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / f"{name}.md").write_text(text)
    print(text)
    print(json.dumps({"report": str(args.out / f"{name}.json"), "seconds": report["seconds"],
                      **summary(report)}))


def spread(samples: list[float], unit: str, digits: int = 3) -> dict[str, Any]:
    """A figure over its repeats: the median, the lowest and highest, how many (here, not in
    bench.costs, whose imports, Ray's among them, each process bench.flood spawns would pay)."""
    return {"unit": unit, "median": round(statistics.median(samples), digits),
            "min": round(min(samples), digits), "max": round(max(samples), digits),
            "repeats": len(samples)}
