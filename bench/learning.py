"""Learning: what Kairos's choices earn against the bandit libraries, on the same rounds.

    python -m bench.learning                 # five datasets, five shuffles, three seeds each
    python -m bench.learning --smoke         # two small slices, one shuffle (the suite's)
    python -m bench.learning --delay 100     # each reward learned 100 rounds late

The supervised-to-bandit reduction (Bietti, Agarwal & Langford, JMLR 2021): each labelled
row is a round, the classes are the arms, and choosing the row's class earns 1, anything
else 0; one pass, no second look. Contexts are standardised online (each feature by the
running mean and deviation of the rows before it) for every policy alike, except
`kairos_standardize`, which takes the raw rows and standardises them with the catalog's
`standardize` transform. `kairos_optimistic` draws optimistically (`optimistic: true`: a
Thompson draw below the posterior mean counts as the mean). `kairos_ucb` is Kairos with UCB
instead of its default Thompson sampling: ahead with immediate rewards, behind once rewards come late (--delay), as they do
in production, where a deterministic policy shows every similar customer the same arm until
the outcomes arrive. The datasets ship inside river and scikit-learn; `synthetic_120` (120
features) is generated, for the wide-context target.

Kairos runs through its own decision path, the compiled kernel: a catalog generated from
the dataset makes each class an action and the features one `vector` context key read by a
predictor, with the catalog's defaults for everything else (exploration, priors, posterior,
arbitration), then every round is `DecisionEngine.decide` and `record_outcomes` (accept for
a reward of 1, reject for 0) naming the decision. The peers, in the same run on the same
shuffles: river's LinUCB (disjoint), river's LogisticRegression with epsilon-greedy choice,
and Vowpal Wabbit's `--cb_explore_adf --squarecb`.

The verdict holds when, on every dataset, Kairos's mean online reward is at least the best
peer's (from WIDE_FEATURES features on: river's LogisticRegression epsilon-greedy's), paired
over the shuffles (each shuffle's reward the mean of SEEDS policy seeds). Writes
bench/results/learning-<time>.json, .md and .png (running mean reward over the rounds, one
panel per dataset) and prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import yaml
from tqdm import tqdm

from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

from . import report

RESULTS = Path(__file__).parent / "results"
SHUFFLES = 5
# A policy's own draws (Thompson samples, epsilon coins, VW's exploration) move one pass's
# reward by about 0.015 on image_segments, as much as the gaps the verdict judges: each
# shuffle's reward is the mean over this many policy seeds, the same seeds for every policy
SEEDS = 3
SEED_STRIDE = 1000  # seed k of shuffle s is s + k * SEED_STRIDE: seed 0 is the shuffle's own
EPSILON = 0.1  # the epsilon-greedy peer's share of random arms
# From this many features on, the target is river's LogisticRegression epsilon-greedy (the
# peer made for wide contexts), not the best peer
WIDE_FEATURES, WIDE_PEER = 100, "river_logistic_egreedy"
CHANNEL, PLACEMENT = "bench", "main"
T0 = 1_800_000_000.0


@dataclass
class Dataset:
    name: str
    X: np.ndarray  # rows x features, float64
    y: np.ndarray  # class index per row
    classes: list[str]


def datasets(names: list[str]) -> Iterator[Dataset]:
    """The datasets that ship inside river and scikit-learn (nothing is downloaded)."""
    loaders: dict[str, Callable[[], Dataset]] = {
        "image_segments": lambda: _river("image_segments", "ImageSegments"),
        "phishing": lambda: _river("phishing", "Phishing"),
        "digits": lambda: _sklearn("digits", "load_digits"),
        "wine": lambda: _sklearn("wine", "load_wine"),
        "synthetic_120": _synthetic,
    }
    for name in names:
        yield loaders[name]()


def _river(name: str, cls: str) -> Dataset:
    from river import datasets as river_datasets
    rows = list(getattr(river_datasets, cls)())
    features = list(rows[0][0])
    labels = sorted({str(y) for _, y in rows})
    X = np.array([[float(x[f]) for f in features] for x, _ in rows])
    return Dataset(name, X, np.array([labels.index(str(y)) for _, y in rows]), labels)


def _sklearn(name: str, loader: str) -> Dataset:
    import sklearn.datasets
    bunch = getattr(sklearn.datasets, loader)()
    classes = [str(c) for c in sorted(set(bunch.target.tolist()))]
    return Dataset(name, np.asarray(bunch.data, np.float64), bunch.target.astype(int), classes)


def _synthetic() -> Dataset:
    """120 features (40 informative, 20 of them combined into 20 more, the rest noise), 5
    classes: the 100+ predictor case, generated (scikit-learn's make_classification, seed 0)."""
    import sklearn.datasets
    X, y = sklearn.datasets.make_classification(
        n_samples=3000, n_features=120, n_informative=40, n_redundant=20, n_classes=5,
        n_clusters_per_class=1, random_state=0)
    return Dataset("synthetic_120", X, y, [str(c) for c in range(5)])


def standardised(X: np.ndarray) -> np.ndarray:
    """Each row by the running mean and deviation of the rows before it (Welford); a feature
    without spread yet stays centred, unscaled."""
    out = np.empty_like(X)
    mean = np.zeros(X.shape[1])
    m2 = np.zeros(X.shape[1])
    for n, row in enumerate(X):
        sd = np.sqrt(m2 / n) if n > 1 else np.zeros(X.shape[1])
        out[n] = (row - mean) / np.where(sd > 1e-9, sd, 1.0)
        delta = row - mean
        mean += delta / (n + 1)
        m2 += delta * (row - mean)
    return out


class Policy(Protocol):
    """`choose` returns the arm (-1: none) and what `learn` needs of that round, which may
    come rounds later (--delay)."""

    def choose(self, x: np.ndarray) -> tuple[int, Any]: ...
    def learn(self, x: np.ndarray, arm: int, reward: float, ticket: Any) -> None: ...


class Kairos:
    """The engine on a catalog generated from the dataset: its defaults, its kernel."""

    raw = False  # takes the rows as the harness standardised them
    transform = "identity"
    method = "thompson"
    optimistic = False  # the catalog's default

    def __init__(self, n_features: int, n_arms: int, seed: int):
        self.n_features = n_features
        self.actions = [f"class_{a}" for a in range(n_arms)]
        self.engine = DecisionEngine(compiled_from_text(self.catalog(), "<bench>"), seed=seed)
        self.now = T0

    def catalog(self) -> str:
        return yaml.safe_dump({
            "kairos_catalog": 1, "name": "bench-learning", "version": "1",
            "channels": {CHANNEL: {"placements": {PLACEMENT: {"top_k": 1}}}},
            "context": {"x": {"type": "vector", "size": self.n_features}},
            "events": {"seen": {"fields": {}}},
            "consent": {"service": True},
            "arbitration": {"exploration": {"method": self.method,
                                            "optimistic": self.optimistic}},
            "actions": [{"id": a, "group": "serve", "purpose": "service",
                         "channels": {CHANNEL: {"treatment": a}}, "value": 1}
                        for a in self.actions],
            "models": {"predictors": [{"name": "x", "source": "context",
                                       "transform": self.transform}]},
            "fallbacks": {CHANNEL: []}}, sort_keys=False)

    def choose(self, x: np.ndarray) -> tuple[int, Any]:
        self.now += 1.0
        decision = self.engine.decide("bench", CHANNEL, PLACEMENT, {"x": x}, now=self.now)
        if not decision.actions:
            return -1, None  # no action: earns nothing, and there is nothing to learn
        return self.actions.index(decision.actions[0].action_id), decision.decision_id

    def learn(self, x: np.ndarray, arm: int, reward: float, ticket: Any) -> None:
        if arm >= 0:
            self.engine.record_outcomes([("bench", self.actions[arm], CHANNEL,
                                          "accept" if reward > 0 else "reject", self.now,
                                          ticket)])


class KairosStandardizing(Kairos):
    """Kairos on the raw rows, standardising them itself (the `standardize` transform)."""

    raw = True
    transform = "standardize"


class KairosOptimistic(Kairos):
    """Kairos with optimistic Thompson sampling (May et al. 2012)."""

    optimistic = True


class KairosUCB(Kairos):
    """Kairos with UCB instead of the default Thompson sampling (same variance scale)."""

    method = "ucb"


class RiverLinUCB:
    def __init__(self, n_features: int, n_arms: int, seed: int):
        from river import bandit
        self.policy = bandit.LinUCBDisjoint(seed=seed)
        self.arms = list(range(n_arms))

    def choose(self, x: np.ndarray) -> tuple[int, Any]:
        return self.policy.pull(self.arms, context=_as_dict(x)), None

    def learn(self, x: np.ndarray, arm: int, reward: float, ticket: Any) -> None:
        self.policy.update(arm, _as_dict(x), reward)


class RiverLogisticGreedy:
    """One river LogisticRegression per arm; the best predicted arm, or with probability
    EPSILON a random one."""

    def __init__(self, n_features: int, n_arms: int, seed: int):
        from river import linear_model
        self.models = [linear_model.LogisticRegression() for _ in range(n_arms)]
        self.rng = random.Random(seed)

    def choose(self, x: np.ndarray) -> tuple[int, Any]:
        if self.rng.random() < EPSILON:
            return self.rng.randrange(len(self.models)), None
        context = _as_dict(x)
        scores = [m.predict_proba_one(context).get(True, 0.0) for m in self.models]
        best = max(scores)
        return self.rng.choice([a for a, s in enumerate(scores) if s == best]), None

    def learn(self, x: np.ndarray, arm: int, reward: float, ticket: Any) -> None:
        self.models[arm].learn_one(_as_dict(x), reward > 0)


class VowpalSquareCB:
    def __init__(self, n_features: int, n_arms: int, seed: int):
        import vowpalwabbit
        self.vw = vowpalwabbit.Workspace(f"--cb_explore_adf --squarecb -q sa --quiet --random_seed "
                                         f"{seed}")
        self.n_arms = n_arms
        self.rng = random.Random(seed)

    def _lines(self, x: np.ndarray, label: tuple[int, float, float] | None = None) -> list[str]:
        """VW's multi-line example; `label` = (arm, cost, the arm's probability)."""
        shared = "shared |s " + " ".join(f"f{j}:{v:.6g}" for j, v in enumerate(x))
        arms = []
        for a in range(self.n_arms):
            cost = f"0:{label[1]}:{label[2]} " if label and label[0] == a else ""
            arms.append(f"{cost}|a arm{a}")
        return [shared, *arms]

    def choose(self, x: np.ndarray) -> tuple[int, Any]:
        pmf = list(self.vw.predict(self._lines(x)))
        arm = self.rng.choices(range(self.n_arms), weights=pmf)[0]
        return arm, pmf[arm]

    def learn(self, x: np.ndarray, arm: int, reward: float, ticket: Any) -> None:
        self.vw.learn(self._lines(x, (arm, -reward, ticket)))


def _as_dict(x: np.ndarray) -> dict[str, float]:
    return {f"f{j}": v for j, v in enumerate(x.tolist())}


POLICIES: dict[str, Callable[[int, int, int], Policy]] = {
    "kairos": Kairos, "kairos_standardize": KairosStandardizing,
    "kairos_optimistic": KairosOptimistic, "kairos_ucb": KairosUCB,
    "river_linucb": RiverLinUCB,
    "river_logistic_egreedy": RiverLogisticGreedy, "vw_squarecb": VowpalSquareCB}


def play(make: Callable[[int, int, int], Policy], data: Dataset, order: np.ndarray,
         seed: int, delay: int = 0) -> tuple[np.ndarray, float]:
    """One pass over the rows in `order`: the reward of every round, and the seconds per round
    (choosing and learning). Each round's reward is learned `delay` rounds later, as outcomes
    reach a live system after the decisions that came meanwhile."""
    X = data.X[order] if getattr(make, "raw", False) else standardised(data.X[order])
    y = data.y[order]
    policy = make(X.shape[1], len(data.classes), seed)
    rewards = np.zeros(len(y))
    waiting: deque[tuple[np.ndarray, int, float, Any]] = deque()
    started = time.perf_counter()
    for t, (x, label) in enumerate(zip(X, y)):
        arm, ticket = policy.choose(x)
        rewards[t] = 1.0 if arm == label else 0.0
        waiting.append((x, arm, rewards[t], ticket))
        if len(waiting) > delay:
            policy.learn(*waiting.popleft())
    return rewards, (time.perf_counter() - started) / len(y)


def run(names: list[str], shuffles: int, rows: int | None, policies: list[str],
        delay: int = 0, seeds: int = SEEDS) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for data in datasets(names):
        n = min(rows or len(data.y), len(data.y))
        per_policy: dict[str, Any] = {p: {"rewards": [], "us_per_round": []} for p in policies}
        curves: dict[str, np.ndarray] = {p: np.zeros(n) for p in policies}
        with tqdm(total=shuffles * seeds * len(policies), desc=data.name, leave=False) as bar:
            for shuffle in range(shuffles):
                order = np.random.default_rng(shuffle).permutation(len(data.y))[:n]
                for name in policies:
                    rewards, seconds = np.zeros(n), 0.0
                    for k in range(seeds):
                        one, took = play(POLICIES[name], data, order, shuffle + k * SEED_STRIDE,
                                         delay)
                        rewards += one / seeds
                        seconds += took / seeds
                        bar.update()
                    per_policy[name]["rewards"].append(float(rewards.mean()))
                    per_policy[name]["us_per_round"].append(seconds * 1e6)
                    curves[name] += np.cumsum(rewards) / np.arange(1, n + 1) / shuffles
        for name in policies:
            r = per_policy[name]
            r["mean"] = statistics.fmean(r["rewards"])
            r["sd"] = statistics.stdev(r["rewards"]) if len(r["rewards"]) > 1 else 0.0
            r["curve"] = curves[name][::max(n // 200, 1)].round(4).tolist()
        wide = data.X.shape[1] >= WIDE_FEATURES
        results[data.name] = {"rows": n, "features": int(data.X.shape[1]),
                              "arms": len(data.classes), "policies": per_policy,
                              **_paired(per_policy, WIDE_PEER if wide else None)}
    return results


def _paired(per_policy: dict[str, Any], against: str | None = None) -> dict[str, Any]:
    """Kairos against the best peer (by mean), shuffle by shuffle; where the target is a
    named peer (`against`, the wide datasets'), against it too, and the verdict is on the
    target. Both are kept so a report never shows the target alone where a peer beat Kairos."""
    best = _against(per_policy, None)
    if not best:
        return {}
    target = _against(per_policy, against) if against else best
    return {**{f"{k}_vs_best": v for k, v in best.items()},
            "best_peer": target["peer"], "kairos_minus_best": target["minus"],
            "kairos_wins": target["wins"], "shuffles": target["shuffles"],
            "held": target["minus"] >= 0.0}


def _against(per_policy: dict[str, Any], peer: str | None) -> dict[str, Any]:
    """Kairos minus the peer named (else the best by mean), shuffle by shuffle."""
    peers = {p: r for p, r in per_policy.items() if not p.startswith("kairos")
             and (peer is None or p == peer)}
    if "kairos" not in per_policy or not peers:
        return {}
    best = max(peers, key=lambda p: peers[p]["mean"])
    diffs = [k - b for k, b in zip(per_policy["kairos"]["rewards"], peers[best]["rewards"])]
    return {"peer": best, "minus": round(statistics.fmean(diffs), 4),
            "wins": sum(d >= 0 for d in diffs), "shuffles": len(diffs)}


def markdown(results: dict[str, Any]) -> str:
    policies = list(next(iter(results["datasets"].values()))["policies"])
    lines = [f"# Learning {results['run']}", "", f"`{results['command']}`", "",
             f"Mean online reward (± sd over {results['shuffles']} shuffles, each the mean of "
             f"{results['seeds']} policy seeds), one pass"
             + (f", each reward learned {results['delay']} rounds late" if results["delay"]
                else "") + "; µs per round in brackets.", "",
             "| dataset (rows×arms, features) | " + " | ".join(policies)
             + " | Kairos − target (wins) | Kairos − best peer (wins) |",
             "|---|" + "---:|" * (len(policies) + 2)]
    for name, d in results["datasets"].items():
        cells = []
        for p in policies:
            r = d["policies"][p]
            cells.append(f"{r['mean']:.3f} ± {r['sd']:.3f} "
                         f"[{statistics.fmean(r['us_per_round']):.0f}]")
        lines.append(f"| {name} ({d['rows']}×{d['arms']}, {d['features']}) | "
                     + " | ".join(cells)
                     + f" | {_gap(d.get('kairos_minus_best'), d.get('best_peer'), d)} | "
                     + _gap(d.get("minus_vs_best"), d.get("peer_vs_best"), d, "wins_vs_best")
                     + " |")
    lines += ["", f"The target is the best peer, and from {WIDE_FEATURES} features on "
              f"{WIDE_PEER}; the verdict is judged against the target.", "",
              report.verdict_line(results["verdict"])]
    return "\n".join(lines) + "\n"


def _gap(minus: float | None, peer: str | None, d: dict[str, Any],
         wins: str = "kairos_wins") -> str:
    """`+0.007 vs river_linucb (3/5)`; `—` where no peer ran."""
    if minus is None:
        return "—"
    return f"{minus:+.3f} vs {peer} ({d.get(wins)}/{d.get('shuffles')})"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["datasets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.8), squeeze=False)
    for ax, (name, d) in zip(axes[0], sets.items()):
        for policy, r in d["policies"].items():
            step = max(d["rows"] // 200, 1)
            ax.plot(np.arange(len(r["curve"])) * step + 1, r["curve"], label=policy)
        ax.set_title(name)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel("running mean reward")
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verdict(sets: dict[str, Any]) -> dict[str, Any]:
    """Held where Kairos is at least its target on every dataset."""
    against = {name: "best_peer" if d["features"] < WIDE_FEATURES else WIDE_PEER
               for name, d in sets.items()}
    return {"held": all(d.get("held", False) for d in sets.values()),
            "checks": {f"{name}_at_least_{against[name]}": d.get("held", False)
                       for name, d in sets.items()}}


def judged(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run paired and judged again from its per-shuffle rewards."""
    sets = {}
    for name, d in saved["datasets"].items():
        plain = {k: v for k, v in d.items() if k in ("rows", "features", "arms", "policies")}
        wide = d["features"] >= WIDE_FEATURES
        sets[name] = {**plain, **_paired(d["policies"], WIDE_PEER if wide else None)}
    return {**saved, "datasets": sets, "verdict": verdict(sets)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.learning",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["image_segments", "phishing", "digits", "wine",
                                 "synthetic_120"])
    parser.add_argument("--shuffles", type=int, default=SHUFFLES)
    parser.add_argument("--seeds", type=int, default=SEEDS,
                        help="policy seeds per shuffle, their rewards averaged")
    parser.add_argument("--rows", type=int, default=None, help="the first N rows of a shuffle")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--smoke", action="store_true",
                        help="wine and phishing, 300 rows, one shuffle")
    parser.add_argument("--delay", type=int, default=0,
                        help="learn each round's reward this many rounds later")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--judge", type=Path, metavar="FILE.json",
                        help="print a saved run's report under this version's pairing and "
                             "verdict (the file is left as it was)")
    args = parser.parse_args(argv)
    if args.judge:
        print(markdown(judged(json.loads(args.judge.read_text()))), end="")
        return 0
    if args.smoke:
        args.datasets, args.shuffles, args.rows, args.seeds = ["wine", "phishing"], 1, 300, 1
    command = " ".join(["python -m bench.learning"] + (sys.argv[1:] if argv is None else argv))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    sets = run(args.datasets, args.shuffles, args.rows, args.policies, args.delay, args.seeds)
    results = {"run": f"learning-{stamp}", "command": command, "shuffles": args.shuffles,
               "seeds": args.seeds, "delay": args.delay, "datasets": sets,
               "verdict": verdict(sets)}
    base = report.save(results, args.out, markdown(results))
    plot(results, base.with_suffix(".png"))
    print(json.dumps({"run": results["run"], "held": results["verdict"]["held"],
                      **{name: {"kairos": round(d["policies"]["kairos"]["mean"], 3)
                                if "kairos" in d["policies"] else None,
                                "best_peer": d.get("best_peer")}
                         for name, d in sets.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
