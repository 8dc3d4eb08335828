"""The learner's posterior as the store's meta keeps it (learner.py saves it and takes it up):
the models' statistics, with the catalog they are laid out by (its version and text), the
catalog versions the learner ran, and the last delta taken from each shard incarnation; and as
it publishes it to a shard at a recent version: the models changed since (`ChangedRows`)."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from kairos.core.compiler import compiled_from_text
from kairos.core.models import COUNTS, Adopting, keep_rows, sound_rows

from kairos.cluster.storage import blocks
from kairos.cluster.storage.blocks import BlockCorrupt
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import Published

log = logging.getLogger("kairos.learner")
RAN_KEPT = 256  # the catalog versions run, saved: a delta of an older one is dropped, not refused
PER_MODEL = ("mean", "precision", *COUNTS)  # a row per model; `inputs` is per predictor
PUBLISHED_STATS = (*PER_MODEL, "inputs")  # Published's, in its order
# the merges whose models the learner remembers, to answer a shard at most this many versions
# behind with the models changed since (a version a merge: a few dozen a second at most), and
# at most a row per model among them all (more: the whole table is as cheap to send)
CHANGES_KEPT = 256
# after a write that failed, the periodic saves wait this long, doubled after each failure up
# to the most, before trying again: each try copies the whole table on the loop (30-75 ms at
# 48.5 MiB), which every sync that merged made while the store was down, saturating the loop
SAVE_RETRY_FIRST_S, SAVE_RETRY_MOST_S = 2.0, 60.0
SAVE_FAILED_LOG_S = 60.0  # a store that refuses the saves is said at most this often


@dataclass
class PublishedRows(Published):
    """A model version for a shard that adopts rows (its delta `takes_rows`, or its watch):
    the per-model arrays hold the models at `rows` only (ascending), those changed since
    version `since`, the caller's; `rows` None: every model. `incarnation`: the learner
    process that published it (a shard takes rows only onto a version of the same process).
    A class of its own: a shard of an older release cannot unpickle it, so it does not take
    these rows for its first models."""

    since: int = -1
    rows: np.ndarray | None = None
    incarnation: str | None = None


class ChangedRows:
    """The models each of a table's latest merges changed, by the version it made: at most
    CHANGES_KEPT merges and a row per model in all (a merge that changed more, as a dense
    delta may, leaves none: a version before it is answered with every model). Only the
    merges tell it: a table that moved otherwise (a switch, a put_back, a posterior taken up,
    versions continued past a shard's) starts it again, so a version it does not hold is
    answered with every model."""

    def __init__(self) -> None:
        self._table: Any = None
        self._from = self._to = -1  # it holds the merges after _from, up to _to
        self._merges: deque[tuple[int, np.ndarray]] = deque()
        self.held = 0  # rows in all the merges kept

    def merged(self, table: Any, rows: np.ndarray) -> None:
        """`table` (a ModelTable) merged a delta that changed `rows` and moved a version on."""
        if table is not self._table or self._to != table.version - 1:
            self._table, self._from = table, table.version - 1
            self._merges.clear()
            self.held = 0
        self._merges.append((table.version, rows))
        self._to = table.version
        self.held += len(rows)
        while self._merges and (len(self._merges) > CHANGES_KEPT or
                                self.held > len(table.positives)):
            self._from, dropped = self._merges.popleft()
            self.held -= len(dropped)

    def since(self, table: Any, version: int) -> np.ndarray | None:
        """The models changed after `version`, ascending; None if it does not know."""
        if table is not self._table or self._to != table.version or \
                not self._from <= version <= self._to:
            return None
        later = []
        for merged, rows in reversed(self._merges):  # the latest first: a shard is near
            if merged <= version:
                break
            later.append(rows)
        return np.unique(np.concatenate(later)) if later else np.zeros(0, np.int64)


def holds(learner: Any, known_version: int, takes_rows: bool, based_on: str | None) -> bool:
    """Whether a caller at `known_version` holds `learner`'s latest models: for one that
    takes rows, only if its version is of this learner process (`based_on`)."""
    return learner.models.version == known_version and \
        (not takes_rows or based_on == learner.incarnation)


def published(learner: Any, known_version: int, takes_rows: bool,
              based_on: str | None) -> Published | None:
    """`learner`'s latest models, unless the caller holds them: for a caller that
    `takes_rows`, those changed since its version where the learner remembers them and the
    version is this learner process's (else every model)."""
    if holds(learner, known_version, takes_rows, based_on):
        return None
    m, ours = learner.models, takes_rows and based_on == learner.incarnation
    rows = learner.changed.since(m, known_version) if ours else None
    stats = [getattr(m, name).copy() if rows is None or name == "inputs" else
             getattr(m, name)[rows] for name in PUBLISHED_STATS]  # copies: merges write
    if not takes_rows:
        return Published(m.version, learner.compiled.version, *stats)
    return PublishedRows(m.version, learner.compiled.version, *stats, since=known_version,
                         rows=rows, incarnation=learner.incarnation)


def save_models(learner: Any) -> bytes:
    """`learner`: the Learner (not imported: it imports this module)."""
    return b"".join(saved_parts(learner))


def saved_parts(learner: Any) -> list[bytes]:
    """What `save_models` joins (`blocks.pack_parts`): the arrays' parts are copies, as merges
    write the models in place."""
    m = learner.models
    return blocks.pack_parts({
        "catalog": learner.compiled.version, "catalog_text": learner.catalog_text,
        "version": m.version, "ran": list(learner.ran),
        "sequences": [[*key, *last] for key, last in learner.sequences.items()],
        **{name: getattr(m, name) for name in (*PER_MODEL, "inputs")}})


class Saves:
    """The learner's saves of its posterior under the store's meta `key`, one at a time. The
    periodic ones (a sync's, a flush's) copy the models on the event loop (`saved_parts`:
    30-75 ms for a 48.5 MiB table, measured on a loaded machine) and join and write them on a
    thread (a save on the loop took 150-500 ms at that size, which held every shard's syncs
    and watches). One asked for while another is written is taken as soon as that write
    lands (after one that failed, once `due`). A save whose failure its caller must hear
    (`save_now`: a switch's, which a failure undoes) waits for the one in flight first
    (`idle`), so an older one never lands after it; one asked for while it is written is not
    taken if it fails: its caller puts the learner back if the store did not take it, and
    only raises any other (either way, the next save writes the learner as it is then).
    After a periodic write that failed, the next `periodic` one waits SAVE_RETRY_FIRST_S,
    doubled after each failure up to SAVE_RETRY_MOST_S (reset by a write that lands), and
    its caller (a sync) does not wait for it: a store that is down would hold every sync's
    answer for its timeout; their failures are logged at most every SAVE_FAILED_LOG_S, and
    the write that lands after them says how many failed over how long. A `flush`
    (runtime.stop's) tries at once, waits, logs its failure always and raises it. Every
    failed write counts in `failed_total`; `status` shows the merges not saved yet, and the
    periodic saves' and flushes' writes failed since one landed (a switch's failure is its
    caller's to hear, and delays no periodic save) and for how long."""

    def __init__(self, store: Any, key: str) -> None:
        self.store, self.key = store, key
        self.saved_at = -math.inf  # when the latest save written was taken (monotonic)
        self.merges = 0  # the learner's merges it holds
        self.retry_s = 0.0  # how long the periodic saves wait after the latest failed write
        self._retry_at = -math.inf  # monotonic: not before then
        self._refused = ThrottledWarning(log, SAVE_FAILED_LOG_S)
        self._failed, self._failed_since = 0, 0.0  # writes failed since one landed; first's end
        self.failed_total = 0  # writes failed, ever (kairos_learner_saves_failed_total)
        self.lost = 0  # the merges the latest flush could not save (its raise names them)
        self._writing: asyncio.Task | None = None
        self._asked: Any = None  # the learner whose save was asked for during a write
        self._stopped = False

    def due(self, every_s: float) -> bool:
        now = time.monotonic()
        return now - self.saved_at >= every_s and now >= self._retry_at

    async def periodic(self, learner: Any, every_s: float) -> None:
        """Save the merges not saved, if `every_s` passed since the last save was taken and
        any wait after a failed write (`due`); wait until it is written unless it tries again
        after a failure (a sync's answer does not wait out a store that is down)."""
        if learner.merged != self.merges and self.due(every_s):
            await self.save(learner, wait=not self.retry_s)

    async def flush(self, learner: Any) -> None:
        """Save the merges not saved, once `idle`, and wait until written; one the store does
        not take is logged with the merges it leaves unsaved, whenever the last warning was,
        and raises StoreUnavailable naming them (runtime.stop's, before the kill, which warns
        of it: this process's log goes with the process); any other failure raises as it is."""
        await self.idle()
        if not self._stopped and learner.merged != self.merges:
            await asyncio.shield(self._write_from(learner, waited=True, flushed=True))
            if self.lost:
                raise StoreUnavailable(f"the store did not take the learner's last save: the "
                                       f"{self.lost} merges since the last save that landed "
                                       f"are lost if its process ends now")

    async def idle(self) -> None:
        """Once no save is in flight (a caller cancelled does not stop it); a save that
        failed fails its own caller, not this one."""
        while self._writing is not None:
            await asyncio.wait([self._writing])

    def stop(self) -> None:
        """Start no save from now on (one in flight is written: `idle`)."""
        self._stopped, self._asked = True, None

    async def save(self, learner: Any, wait: bool = True) -> None:
        """Save the learner's posterior, and `wait` until it is written, unless a save is in
        flight: then it is taken once that one is written (if it was), and nothing waits for
        it. A store that does not take it (StoreUnavailable) is logged, and the next save
        tries again; any other failure raises here if waited for (else it is logged)."""
        if self._stopped:
            return
        if self._writing is not None:
            self._asked = learner
            return
        writing = self._write_from(learner, waited=wait)
        if wait:
            await asyncio.shield(writing)

    def _write_from(self, learner: Any, waited: bool, heard: bool = False,
                    flushed: bool = False) -> asyncio.Task:
        self._writing = asyncio.get_running_loop().create_task(self._write(
            saved_parts(learner), learner.merged, time.monotonic(), waited, heard, flushed))
        return self._writing

    async def _write(self, parts: list[bytes], merges: int, taken_at: float,
                     waited: bool, heard: bool, flushed: bool) -> None:
        """`waited`: whether a caller waits for it, which takes its failure (else logged);
        `heard`: StoreUnavailable too (else logged), and no failure delays the next save;
        `flushed`: a flush's, whose StoreUnavailable is logged whenever the last was."""
        written = False
        try:
            await asyncio.to_thread(lambda: self.store.put_meta(self.key, b"".join(parts)))
            self.saved_at, self.merges, written = taken_at, merges, True
            self.retry_s, self._retry_at, self.lost = 0.0, -math.inf, 0
            if self._failed:
                log.warning("learner: the posterior is saved again; writes failed: %d, over "
                            "%.1f s", self._failed, time.monotonic() - self._failed_since)
                self._failed = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed_total += 1
            # save_now's (a switch's): its caller hears it, the learner goes back to the catalog
            # it ran, whose merges the periodic saves keep: no loss to show in `status`, where it
            # would stay until a merge's save lands (an idle cluster's: for good)
            if heard:
                raise
            now = time.monotonic()
            if not self._failed:
                self._failed_since = now
            self._failed += 1
            self.retry_s = min(SAVE_RETRY_MOST_S, max(SAVE_RETRY_FIRST_S, 2 * self.retry_s))
            self._retry_at = now + self.retry_s
            if isinstance(exc, StoreUnavailable) and flushed:
                self.lost = merges - self.merges
                log.warning("learner: could not save the posterior at the flush: the %d merges "
                            "since the last save are lost if the process ends now: %s",
                            merges - self.merges, exc)
            elif isinstance(exc, StoreUnavailable):
                self._refused.warn("learner: could not save the posterior (tried again in "
                                   "%g s at the earliest): %s", self.retry_s, exc)
            elif waited:
                raise
            else:
                log.exception("learner: saving the posterior failed")
        finally:
            self._writing, asked, self._asked = None, self._asked, None
            # only after a write that landed: the loop shutting down cancels it, and nothing
            # is started then; after a failure the next save is `due` once the wait is out
            # (and after a heard write's, save_now's, a switch's, its caller puts the learner
            # asked back, which this write would save switched)
            if asked is not None and written and asked.merged != self.merges:
                self._write_from(asked, waited=False)

    def status(self, learner: Any) -> dict[str, Any]:
        """For the learner's `status`: `learner`'s merges not in the store yet (unsaved), the
        periodic saves' and flushes' writes failed since one landed (saves_failed), and for
        how long: seconds since the first of them ended, 0 while none has (saves_failing_s)."""
        failing_s = time.monotonic() - self._failed_since if self._failed else 0.0
        return {"unsaved": learner.merged - self.merges, "saves_failed": self._failed,
                "saves_failing_s": round(failing_s, 1)}

    async def save_now(self, learner: Any) -> None:
        """Save once `idle`, and wait until it is written; StoreUnavailable if the store does
        not take it, StoreInUse once `stop`ped."""
        await self.idle()
        if self._stopped:
            raise StoreInUse("the learner saves nothing more: its cluster lost the store")
        await asyncio.shield(self._write_from(learner, waited=True, heard=True))


class Restoring(NamedTuple):
    """A saved posterior read and made ready to take up (`restoring`, the heavy part: a
    thread may run it), for `take_up`."""

    text: str | None  # the saved catalog's (None: saved by an older release)
    # switching.py's Remapped: the learner's tables in that catalog's layout, the saved
    # statistics adopted (a table nothing else holds yet); else None, and:
    moved: Any
    whole: Adopting | None  # the saved statistics, prepared for the learner's own table
    version: int  # the learner's once taken up
    ran: list[str]
    sequences: dict[tuple[str, str], tuple[int, float]]
    bad: int  # saved models not sound (models.sound_rows), started again from their prior


def restoring(learner: Any, blob: bytes, follow_catalog: bool = False) -> Restoring | None:
    """A saved posterior made ready to take up; None if it is not to be. One of another catalog
    text, whatever its version (the same version's rows may be other actions'), is taken up
    only with `follow_catalog` (a learner Ray restarted runs the catalog it was created with,
    while the saved one is the latest it switched to): the learner switches to the saved
    catalog first, with its tables remapped here. Where either text is unknown (an older
    release saved none, a learner made without one), the version tells, and the learner stays
    unconfirmed (merging.py). A blob of another catalog that does not hold together leaves
    the learner as it was (remapped aside, nothing switched): on its own catalog, unconfirmed
    until told the cluster's, rather than switched to a text read from a damaged blob and
    confirmed by it, on priors (as before 7ab080d, which remapped it aside). Statistics a
    blob lacks (saved by an older release) start where a new table does. BlockCorrupt,
    KeyError, CatalogError for a blob that does not hold together (BlockCorrupt too for one
    whose shapes do not fit its catalog). The learner is
    only read (a thread may run this while the loop answers `status`): unpacking, compiling
    the saved catalog, the remap and the adopt's inversions took 1.9-2.6 s for 4,500 models of
    32 coefficients (a 37 MiB posterior), and compiling an uncached catalog text ~3 s more."""
    saved = blocks.unpack(blob)
    text = saved.get("catalog_text")
    if text is None or learner.catalog_text is None:
        same = saved["catalog"] == learner.compiled.version
    else:
        same = text == learner.catalog_text
    moved = None
    if not same:
        if not follow_catalog or text is None:
            return None
        if compiled_from_text(text).version != saved["catalog"]:
            raise BlockCorrupt(f"the saved catalog text is not of version {saved['catalog']}")
        moved = learner.remapped(text)
        moved.models.version = learner.version + 1  # the switch's (Learner.switch)
    m = learner.models if moved is None else moved.models
    stats = {name: saved.get(name, getattr(m, name)) for name in (*PER_MODEL, "inputs")}
    stats["precision"] = m.converted(stats["precision"])  # saved under the other posterior
    if any(stats[name].shape != getattr(m, name).shape for name in stats):
        raise BlockCorrupt(f"the saved posterior's shapes do not fit catalog "
                           f"{saved['catalog'] if moved else learner.compiled.version}")
    ok = sound_rows(*(stats[name] for name in PER_MODEL))
    bad = int(len(ok) - ok.sum())
    if bad:  # saved before models were checked: those start again from their prior
        for name in PER_MODEL:
            stats[name] = keep_rows(ok, stats[name], getattr(m, name))
    if not np.isfinite(stats["inputs"]).all():
        stats["inputs"] = m.inputs
    saved_as = SimpleNamespace(**stats, version=max(saved["version"], m.version) + 1)
    whole = None
    if moved is None:  # the learner's own table, which only the loop writes
        whole = m.adopting(saved_as)
        whole.prepare()
    else:
        m.adopt(saved_as)
    # the deltas the posterior holds, so that one sent again is not merged twice
    sequences = {(str(shard), str(incarnation)): (int(sequence), float(heard))
                 for shard, incarnation, sequence, heard in saved.get("sequences", [])}
    return Restoring(text, moved, whole, saved_as.version, list(map(str, saved.get("ran", ()))),
                     sequences, bad)


def take_up(learner: Any, ready: Restoring) -> None:
    """Take up a posterior `restoring` made of `learner` (on the loop: it switches the learner
    and announces); RuntimeError if the learner's tables moved since, which nothing does
    while the saved posterior is unread (learner.py `_ready`)."""
    if ready.moved is not None:
        learner.switch(ready.text, ready.moved)
        learner.models.version = ready.version
    elif not learner.models.adopt_prepared(ready.whole):
        raise RuntimeError("the learner's tables changed while its saved posterior was read")
    if ready.bad:
        log.warning("learner: %d saved models are not finite or not sound; they start from "
                    "their prior", ready.bad)
    learner.models.refused += ready.bad
    learner.ran = dict.fromkeys([*ready.ran, *learner.ran][-RAN_KEPT:])
    for key, (sequence, heard) in ready.sequences.items():
        if sequence > learner.sequences.get(key, (-1, 0.0))[0]:
            learner.sequences[key] = (sequence, heard)
    if ready.text is not None:  # the text it was last switched to: the cluster's (merging.py)
        learner.unconfirmed = False
