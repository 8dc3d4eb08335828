"""`python -m bench.resident --judge`: a saved run judged again with this version's targets."""
from __future__ import annotations

from bench import resident


def test_a_late_generator_leaves_the_p99_ratio_unjudged(capsys):
    # the committed run: its 1,000,000 step's generator fell behind its schedule
    saved = resident.RESULTS / "resident-20261203T193146Z.json"
    assert resident.main(["--judge", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "bytes per customer ≤ 1024: 779 — **met**" in out
    assert "0.114x — **not judged** (the generator fell behind" in out
