"""A paused live page asks again after about 10 s, each page at its own time (0.5 to 1.5
times that), and while the gateway does not answer ("down") twice as long each time, up to a
minute: every page a gateway restart paused asked again every 10 s, all together. Runs
console.js's `pausedDelay` in Node (skipped without it)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import kairos.cluster.console

SCRIPT = Path(kairos.cluster.console.__path__[0]) / "static" / "console.js"
NODE = shutil.which("node")


def delays(draw: float, downs: list[int]) -> list[float]:
    """pausedDelay(n) for each n of `downs`, Math.random() drawing `draw`."""
    program = f"""
const vm = require("vm");
const context = vm.createContext({{document: {{addEventListener() {{}}}}}});
vm.runInContext(require("fs").readFileSync({json.dumps(str(SCRIPT))}, "utf8"), context);
vm.runInContext("Math.random = () => {draw};", context);
console.log(JSON.stringify({json.dumps(downs)}.map((n) => context.pausedDelay(n))));
"""
    done = subprocess.run([NODE, "-e", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(NODE is None, reason="no Node.js to run console.js")
def test_a_paused_page_waits_a_spread_time_and_longer_while_the_gateway_is_down():
    assert delays(0.5, [0, 1, 2, 3, 8]) == [10000, 20000, 40000, 60000, 60000]
    assert delays(0.0, [0, 3]) == [5000, 30000]
    assert delays(0.999, [0]) == [pytest.approx(14990)]
