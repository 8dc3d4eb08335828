"""The replay report: the evidence as JSON (what PutCatalog can attach to a catalog version),
as Markdown for people, and as a plot (PNG, when matplotlib is installed: `pip install
kairos-nba[report]`; without it the Markdown says so and nothing else changes)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from kairos.cluster import whole_files

ESTIMATORS = (("ips", "IPS"), ("snips", "SNIPS"), ("dr", "doubly robust"))
REWARD_NAMES = {"accept": "accept rate", "value": "value per decision"}
PLOT_MISSING = "no plot: matplotlib is not installed (pip install 'kairos-nba[report]')"
FILES = ("replay.json", "replay.md", "replay.png")  # what write() makes


def _umask() -> int:
    """The process's umask, read once: /proc says it as it is; os.umask can only say it by
    setting another, which a thread making a file meanwhile would get."""
    with contextlib.suppress(OSError, ValueError):  # no /proc (macOS), or no line of it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# the mode open() gives a file made anew: figures of a replay, not customers' data, shared in
# the --out folder as before they were renamed into place (mkstemp's are 0600)
FILE_MODE = 0o666 & ~_umask()


def write(evidence: dict[str, Any], out: Path) -> list[Path]:
    """replay.json, replay.md and (with matplotlib) replay.png in `out`; the paths written.
    Each is written under a name of its own (made anew, FILE_MODE) and renamed, so it is whole
    or absent (`kairos catalog push --evidence` reads the JSON), and a link planted in a shared
    folder under a report's name is replaced, not followed."""
    out.mkdir(parents=True, exist_ok=True)
    data, md, plot = (out / name for name in FILES)
    with whole_files.replacing(data, FILE_MODE) as f:
        f.write(json_text(evidence).encode())
    plotted = _plot(evidence, plot)
    with whole_files.replacing(md, FILE_MODE) as f:
        f.write(markdown(evidence, plot.name if plotted else None).encode())
    return [data, md, plot] if plotted else [data, md]


def unwritable(out: Path) -> str | None:
    """Why write() could not write to `out`, if it could not: `out` (or the first of its
    parents there is) no folder, one of its files a folder, or a folder a file cannot be
    made in. Asked before the work the report is of, which it would otherwise end."""
    out = out.absolute()
    # lexists: a dangling link is there (write()'s mkdir meets it); a name under a folder this
    # user cannot enter is not, and the walk goes on up to that folder, refused below
    there = next(p for p in (out, *out.parents) if os.path.lexists(p))
    # is_dir and lstat raise EACCES (pathlib passes only ENOENT and its kin): a link into, or
    # a name under, a folder this user cannot enter, where no file can be made either
    try:
        if not there.is_dir():  # followed, as write()'s mkdir follows a link to a folder
            return f"{there} is not a folder"
        if folders := [out / name for name in FILES if _folder(out / name)]:
            return f"{folders[0]} is a folder"
        with tempfile.TemporaryFile(dir=there):  # as write() makes one: permissions, read-only
            pass
    except OSError as exc:
        return f"cannot write in {there}: {exc.strerror}"
    return None


def _folder(path: Path) -> bool:
    """Whether `path` itself is a folder, a link not followed: write()'s rename replaces a
    link, even to a folder, and is refused by a folder."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # `out` not there yet: write() makes it
        return False


def json_text(report: Any) -> str:
    """A report as JSON that strict parsers read: an estimate that is unknown (NaN, or an
    infinite bound) is null, not the NaN Python's json writes by default."""
    return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"


def _number(value: Any) -> float:
    """An estimate as a report holds it: a number, or null (json_text) for one unknown."""
    return math.nan if value is None else float(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def refusals(evidence: dict[str, Any]) -> str:
    """The requests the candidate refused, as the summary, the headline and the warnings say
    it: each counts as showing nothing, which moves every estimate."""
    return (f"the candidate refused {evidence['refused']['count']} of {evidence['records']} "
            f"requests (shown as nothing)")


def summary(evidence: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    refused = f"; {refusals(evidence)}" if evidence["refused"]["count"] else ""
    lines = [f"{evidence['evaluated']} of {evidence['records']} logged decisions replayed "
             f"through {evidence['candidate']['name']} {evidence['candidate']['version']}; "
             f"the candidate decides differently in {_pct(evidence['differs']['overall'])}"
             f"{refused}"]
    for reward, estimates in evidence["estimates"].items():
        dr = estimates["dr"]
        lines.append(f"{REWARD_NAMES[reward]}: logged {evidence['logged'][reward]:.4g}, "
                     f"candidate (doubly robust) {dr['value']:.4g} "
                     f"[{dr['low']:.4g}, {dr['high']:.4g}], ESS {dr['ess']:.0f}")
    if evidence["refused"]["count"]:
        lines.append(f"refused, e.g.: {'; '.join(evidence['refused']['examples'])}")
    lines += [f"warning: {w}" for w in _warnings(evidence)]
    return "\n".join(lines)


def _warnings(evidence: dict[str, Any]) -> list[str]:
    """The report's warnings (the refused requests apart): its own, then the overlap's (a
    report written before they were apart has only the overlap's)."""
    return evidence.get("warnings", []) + evidence["overlap"]["warnings"]


def headline(evidence: dict[str, Any]) -> str:
    """One line for `kairos status`: the estimates that matter and the warnings' count;
    KeyError or TypeError when `evidence` is no replay report."""
    estimates = "; ".join(
        f"{REWARD_NAMES[reward]} {_number(e['dr']['value']):.4g} "
        f"[{_number(e['dr']['low']):.4g}, {_number(e['dr']['high']):.4g}] "
        f"(logged {_number(evidence['logged'][reward]):.4g})"
        for reward, e in evidence["estimates"].items())
    refused = f"{refusals(evidence)}; " if evidence["refused"]["count"] else ""
    return (f"replay of {int(evidence['evaluated'])} logged decisions, doubly robust: "
            f"{estimates or 'no estimates'}; {refused}{len(_warnings(evidence))} warning(s)")


def markdown(evidence: dict[str, Any], plot: str | None) -> str:
    c = evidence["candidate"]
    lines = [f"# Replay of {evidence['log']} through {c['name']} {c['version']}", "",
             f"{evidence['records']} logged decisions (catalog versions "
             f"{', '.join(evidence['logged_catalogs']) or 'none'}); {evidence['evaluated']} "
             f"evaluated, {evidence['excluded_no_selection']} left out for having no logged "
             f"selection probability (fallbacks), {evidence.get('excluded_pushes', 0)} for "
             f"being pushes to a watch. The candidate re-decided each "
             f"{evidence['samples']} times (its probabilities within "
             f"{evidence['candidate_error']:.3f}, one standard error). Models: "
             f"{evidence['models']}", ""]
    if evidence["refused"]["count"]:
        lines += [f"{refusals(evidence).capitalize()}, e.g.: "
                  + "; ".join(evidence["refused"]["examples"]), ""]
    lines += ["## Estimates (first slot; 95 % intervals: normal, the accept rate's at least "
              "Wilson's, estimators.py)", "",
              "| reward | logged | estimator | candidate | 95 % interval | ESS |",
              "|---|---|---|---|---|---|"]
    for reward, estimates in evidence["estimates"].items():
        for key, name in ESTIMATORS:
            e = estimates[key]
            lines.append(f"| {REWARD_NAMES[reward]} | {evidence['logged'][reward]:.4g} | "
                         f"{name} | {e['value']:.4g} | [{e['low']:.4g}, {e['high']:.4g}] | "
                         f"{e['ess']:.0f} |")
    lines += [""] + [f"- warning: {w}" for w in evidence.get("warnings", [])]
    lines += ["", f"![estimates]({plot})" if plot else f"({PLOT_MISSING})", "",
              "## Where the candidate decides differently", "",
              f"Overall: {_pct(evidence['differs']['overall'])} of decisions would show "
              f"another action first.", "", "| channel/placement | decisions | differs |",
              "|---|---|---|"]
    lines += [f"| {k} | {v['decisions']} | {_pct(v['differs'])} |"
              for k, v in evidence["differs"]["by_channel"].items()]
    lines += ["", "| logged action | decisions | differs |", "|---|---|---|"]
    lines += [f"| {k} | {v['decisions']} | {_pct(v['differs'])} |"
              for k, v in evidence["differs"]["by_logged_action"].items()]
    lines += ["", "| action | logged first-slot share | candidate's |", "|---|---|---|"]
    lines += [f"| {a} | {_pct(s['logged'])} ({s['logged_count']}) | {_pct(s['candidate'])} |"
              for a, s in evidence["shares"].items()]
    overlap = evidence["overlap"]
    lines += ["", "## Overlap", ""]
    if "ess" in overlap:
        lines += [f"Effective sample size {overlap['ess']:.0f} ({_pct(overlap['ess_share'])} "
                  f"of the evaluated decisions); largest weight {overlap['max_weight']:.3g}; "
                  f"candidate share on actions the log rarely showed: "
                  f"{_pct(overlap['rare_mass'])}.", ""]
    lines += [f"- warning: {w}" for w in overlap["warnings"]] or ["No overlap warnings."]
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _plot(evidence: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rewards = list(evidence["estimates"])
    if not rewards:
        return False
    with whole_files.replacing(path, FILE_MODE) as f:
        _draw(plt, evidence, rewards, f)
    return True


def _draw(plt: Any, evidence: dict[str, Any], rewards: list[str], f: BinaryIO) -> None:
    fig, axes = plt.subplots(1, len(rewards) + 1, figsize=(5 * (len(rewards) + 1), 4))
    for ax, reward in zip(axes, rewards):
        estimates = evidence["estimates"][reward]
        for x, (key, name) in enumerate(ESTIMATORS):
            e = estimates[key]
            ax.errorbar([x], [e["value"]], yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]],
                        fmt="o", capsize=6, label=name)
        ax.axhline(evidence["logged"][reward], color="grey", linestyle="--", label="logged")
        ax.set_xticks(range(len(ESTIMATORS)), [name for _, name in ESTIMATORS])
        ax.set_title(f"candidate's {REWARD_NAMES[reward]} (95 % CI)")
        ax.legend(fontsize="small")
    shares = evidence["shares"]
    names = list(shares)
    ax = axes[-1]
    ax.barh([i + 0.2 for i in range(len(names))], [shares[a]["logged"] for a in names],
            height=0.4, label="log")
    ax.barh([i - 0.2 for i in range(len(names))], [shares[a]["candidate"] for a in names],
            height=0.4, label="candidate")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("first-slot share by action")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
