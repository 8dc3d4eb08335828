"""The silent-connection flood harness runs end to end (quick mode) and reports every scenario
with finite figures, the client's opens counted, every call answered by the real shard, and
the flood from another source really flooding (no timing is judged)."""
from __future__ import annotations

import math

from bench import flood
from tests.bench.harness import quick_report

SPREADS = ("shard_cpu_percent", "flooder_cpu_percent", "call_ms_median", "call_ms_max")


def test_quick_run_reports_every_scenario_with_finite_figures(tmp_path, run_bench):
    summary, report = quick_report(run_bench, "flood", tmp_path)
    assert report["provenance"]["load_average_at_start"] is not None
    assert report["machine"]["cpus"] >= 1 and "same machine" in report["inputs"]["flooder"]
    assert list(report["scenarios"]) == [name for name, _, _ in flood._scenarios(True)]
    repeats = report["inputs"]["repeats"]
    for name, s in report["scenarios"].items():
        for figure in SPREADS:
            assert s[figure]["repeats"] == repeats, (name, figure)
            assert all(math.isfinite(s[figure][k]) for k in ("median", "min", "max"))
        assert s["call_ms_max"]["min"] > 0, name
        # every call on the established connection reached the ShardHost and was applied
        assert s["calls_ok"] == s["calls"] == [report["inputs"]["calls_per_repeat"]] * repeats
        # each of the client's opens counted, opened or turned away with its reason
        for opened, attempts, failures in zip(s["client_opened"], s["client_attempts"],
                                              s["client_open_failures"]):
            assert attempts == flood.CLIENT_OPENS and opened + sum(failures.values()) == attempts
    other = report["scenarios"][next(n for n in report["scenarios"] if "other" in n)]
    assert other["flood_source"] == flood.OTHER_SOURCE and other["client_source"] == flood.HOST
    assert all(n >= other["silent_connections"] > 0 for n in other["flood_connections_opened"])
    assert report["scenarios"]["no_flood"]["flood_connections_opened"] == [0] * repeats
    table = next(tmp_path.glob("flood-*-quick.md")).read_text()
    assert "| scenario | silent connections |" in table
    assert all(f"| {name} |" in table for name in report["scenarios"])
