"""A catalog is its text. Its version string is what shards, deltas and published models carry
(cluster/protocol.py), so the controller keeps one text per version for the life of a store
(`VersionsRun`, saved with its state: saved.py); where the layout of models is decided (a
learner taking up a saved posterior, a switch, the control loop's check of a restarted
learner) the text, or its digest, is compared, not the version: another text under a version
run before puts every model in another action's rows."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Iterable

# the versions the controller remembers: a version reused after this many other switches is
# let through (the learner keeps as many: posterior.py RAN_KEPT)
VERSIONS_KEPT = 256


@lru_cache(maxsize=8)  # the running and previous texts, asked about every control loop round
def catalog_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class VersionsRun:
    """The catalog versions a cluster switched away from, each with its text's digest, at most
    VERSIONS_KEPT (the most recently run). Not changed in place: `with_run` gives another, so
    that a switch undone puts the one before back with the rest of the state."""

    def __init__(self, pairs: Iterable[Iterable[str]] = ()):
        self._digests: dict[str, str] = {version: digest for version, digest in pairs}

    def with_run(self, version: str, text: str) -> VersionsRun:
        ran = VersionsRun()
        ran._digests = {v: d for v, d in self._digests.items() if v != version}
        ran._digests[version] = catalog_digest(text)
        while len(ran._digests) > VERSIONS_KEPT:
            del ran._digests[next(iter(ran._digests))]
        return ran

    def knows(self, text: str) -> bool:
        return catalog_digest(text) in self._digests.values()

    def digests(self) -> list[str]:
        return list(self._digests.values())

    def check(self, version: str, text: str) -> None:
        """ValueError if `version` ran with another text than `text`."""
        digest = self._digests.get(version)
        if digest is not None and digest != catalog_digest(text):
            raise ValueError(f"catalog {version!r} ran before with other text: give it a new "
                             f"version")

    def to_state(self) -> list[list[str]]:
        return [[version, digest] for version, digest in self._digests.items()]
