"""Running a bench harness as a user would: `python -m bench.<name> ... --out <dir>`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_harness(name: str, args: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    """Run bench.<name> with `args`, its reports written under `out`; the JSON summary it
    prints as its last line (the run must succeed)."""
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def quick_report(run_bench, bench: str, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """bench.<bench> --quick (bench/quickrun.py): its summary line and its JSON report, the
    fields every such report has checked."""
    summary = run_bench(bench, out, "--quick", timeout_s=120)  # a hang guard, not a timing
    report = json.loads(next(out.glob(f"{bench}-*-quick.json")).read_text())
    assert summary["report"].endswith(".json") and summary["finite"] is True
    assert report["command"] == f"python -m bench.{bench} --quick"
    assert report["load_average_1m"] >= 0 and report["provenance"]["cpus"] >= 1
    return summary, report
