"""Which partitions a shard serves, under which map version, and the MOVED answer."""
from __future__ import annotations

from kairos.cluster.protocol import NOT_MINE, Moved


class Ownership:
    """`owned`: partition -> the map version that gave it to this shard. Requests routed under
    an older map answer MOVED, so a client re-sending moved requests cannot be overtaken by
    its own older ones. `leaving`: partition -> the map version that moves it away; from the
    freeze on, its requests answer MOVED naming that version and nothing of it is written
    here (its new owner writes its snapshot). `fenced`: partition -> the map version of the
    last move settled here (released or thawed); a step of a move at or below it comes late
    (a remote call that timed out may still run, and calls to an actor can run out of order)
    and is refused: an adopt after its release would make two owners, a freeze after its
    thaw would answer MOVED for ever. `arriving`: partition -> the map version of a move
    adopted here and not yet confirmed (handoff.py): until then its timers do not fire, as
    the move may still be undone and its source fire them again."""

    def __init__(self, owned: dict[int, int]):
        self.owned = owned
        self.leaving: dict[int, int] = {}
        self.arriving: dict[int, int] = {}
        self.fenced: dict[int, int] = {}

    def fence(self, partitions, version: int) -> None:
        for p in partitions:
            self.fenced[p] = max(self.fenced.get(p, version), version)

    def check_unfenced(self, partitions, version: int, step: str) -> None:
        """ValueError when a move's step of map `version` comes after the move was settled."""
        late = [p for p in partitions if version <= self.fenced.get(p, -1)]
        if late:
            raise ValueError(f"a {step} of map version {version} for partitions {late} comes "
                             f"after their move was settled here (version "
                             f"{max(self.fenced[p] for p in late)}): refused")

    def moved(self, partition: int, routed: int | None) -> Moved | None:
        """The MOVED answer for a request of `partition` its sender routed under map version
        `routed` (None: any), or None when it is served here."""
        if partition in self.leaving:
            return Moved(map_version=self.leaving[partition])
        granted = self.owned.get(partition)
        if granted is None:
            return Moved(map_version=NOT_MINE)
        if routed is not None and routed < granted:
            return Moved(map_version=granted)
        return None

    def serving(self) -> int:
        """Partitions owned and not being handed over."""
        return len(self.owned) - sum(1 for p in self.leaving if p in self.owned)
