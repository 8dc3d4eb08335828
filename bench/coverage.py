"""The off-policy estimators against known truth, over many seeds: how often the doubly robust
interval covers the candidate's true value, and each estimator's mean error.

Each seed is a world of `bench/truth.py`: a log Kairos wrote on synthetic customers whose true
acceptance probabilities are known, replayed through the candidate catalog (`kairos replay`'s
code), against the candidate's true value on the same contexts.

    python -m bench.coverage                  # seeds 0 to 59 (about 20 s on 2 cores)
    python -m bench.coverage --seeds 20:60    # seeds 20 to 59

Writes bench/results/coverage-<time>.json and .md and prints the Markdown table.
`tests/property/test_replay_truth.py` runs seeds 0 to 19 through `estimates`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from bench import provenance, truth
from kairos.cluster.evidence import evaluation
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.core.catalog import load_catalog

RESULTS = Path(__file__).parent / "results"
N = 500  # logged decisions per seed
SAMPLES = 32  # the candidate's re-decisions per logged decision
TRUTH_SAMPLES = 16  # per context, for the true value (its Monte Carlo error: a few
# thousandths in accept rate, a tenth of the estimates' standard errors)
REWARDS = ("accept", "value")
ESTIMATORS = ("ips", "snips", "dr")


def estimates(seeds: range, n: int = N) -> list[tuple[dict, truth.TrueValue]]:
    """Per seed, the replay's evaluation of the candidate and its true value."""
    candidate = for_replay(load_catalog(truth.candidate_catalog(), "candidate"))
    out = []
    for seed in seeds:
        records, true = truth.world(seed, n, TRUTH_SAMPLES)
        out.append((evaluation.evaluate(list(replay(records, candidate, SAMPLES, seed)), seed),
                    true))
    return out


def errors(runs: list[tuple[dict, truth.TrueValue]], reward: str, estimator: str
           ) -> np.ndarray:
    """Each seed's estimate less the truth."""
    return np.array([e["estimates"][reward][estimator]["value"] - getattr(t, reward)
                     for e, t in runs])


def covered(runs: list[tuple[dict, truth.TrueValue]], reward: str) -> list[bool]:
    """Per seed, whether the doubly robust interval holds the truth."""
    return [e["estimates"][reward]["dr"]["low"] <= getattr(t, reward)
            <= e["estimates"][reward]["dr"]["high"] for e, t in runs]


def summary(runs: list[tuple[dict, truth.TrueValue]]) -> dict:
    out = {}
    for reward in REWARDS:
        dr = [e["estimates"][reward]["dr"] for e, _ in runs]
        out[reward] = {
            "dr_covered": sum(covered(runs, reward)), "seeds": len(runs),
            "dr_half_width": float(np.mean([(d["high"] - d["low"]) / 2 for d in dr])),
            "mean_error": {est: {"value": float(err.mean()),
                                 "standard_error": float(err.std(ddof=1) / math.sqrt(len(err)))}
                           for est in ESTIMATORS for err in [errors(runs, reward, est)]}}
    return out


def markdown(result: dict) -> str:
    lines = [f"# Off-policy estimates against known truth: seeds {result['seeds']}", "",
             f"`{result['command']}`; {result['decisions_per_seed']} decisions a seed", "",
             "| reward | DR covers the truth | DR half-width | mean error: IPS | SNIPS | DR |",
             "|---|---|---|---|---|---|"]
    for reward, s in result["rewards"].items():
        errs = " | ".join(f"{s['mean_error'][e]['value']:+.4f} ± "
                          f"{s['mean_error'][e]['standard_error']:.4f}" for e in ESTIMATORS)
        lines.append(f"| {reward} | {s['dr_covered']} of {s['seeds']} | "
                     f"{s['dr_half_width']:.3f} | {errs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coverage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0:60", help="FIRST:END (END not included)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args(argv)
    try:
        first, end = (int(x) for x in args.seeds.split(":"))
    except ValueError:
        parser.error(f"--seeds: expected FIRST:END, got {args.seeds!r}")
    if not 0 <= first < end - 1:
        parser.error(f"--seeds: need at least two seeds from 0 on, got {args.seeds!r}")
    result = {"seeds": args.seeds, "decisions_per_seed": N,
              "command": f"python -m bench.coverage --seeds {args.seeds}",
              "rewards": summary(estimates(range(first, end)))}
    provenance.stamp(result)
    stamp = time.strftime("coverage-%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / f"{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
