"""What a result file must say about where it came from, so two runs that differ only by
environment can be told apart: the code's revision, the KAIROS_* and RAY_* settings (secrets
redacted) and the machine's load average when the harness started.

The load average and the revision are read when this module is first imported, which every
harness does before its run starts (through bench.report); read at the end of a run they
would describe the run itself, not the machine it started on.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

from kairos.cluster.storage.store import redact

REPO = Path(__file__).resolve().parent.parent
PREFIXES = ("KAIROS_", "RAY_")
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|PWD|PASSPHRASE|CREDENTIAL|AUTH|"
                         r"CERT|PRIVATE|SIGNING|HMAC|JWT|BEARER", re.I)
REDACTED = "<redacted>"


def revision(repo: Path = REPO) -> str | None:
    """`git describe --always --dirty` of the checkout the harness runs from; None where
    there is no git or no repository (an installed copy)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() or None if done.returncode == 0 else None

    # a copy of the tree inside another repository would name that repository's commit
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != repo.resolve():
        return None
    return git("describe", "--always", "--dirty")


def settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The KAIROS_* and RAY_* variables set, a secret's value replaced by REDACTED (a name
    that might be a secret's counts as one) and a URL's credentials cut out as the stores cut
    them out of what they print (user:password@, password= and token= parameters)."""
    out = {}
    for name in sorted(n for n in environ if n.startswith(PREFIXES)):
        value = environ[name]
        out[name] = REDACTED if SECRET_NAME.search(name) else redact(value)
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not every platform has one
        return None


_AT_START = {"revision": revision(), "load_average_at_start": load_average(),
             "cpus": os.cpu_count()}


def facts() -> dict[str, Any]:
    """What a result file records about its run's code, settings and machine. The settings
    are read when the file is written, so those a harness sets for the system it starts
    (bench.drain, bench.resident, bench.systems do) are in it too."""
    return {**_AT_START, "settings": settings()}


def stamp(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with its provenance added (kept if the results already carry one)."""
    results.setdefault("provenance", facts())
    return results
