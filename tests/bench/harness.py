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
