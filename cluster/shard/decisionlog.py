"""The decision log: every decision a shard makes and every outcome it takes, as evidence for
`kairos log export` and replay (cluster/evidence/records.py has the records).

What is logged: each decision that leaves the shard (a Decide's answer, the decision an
event's `decide` asked for, a push to a watch, GetProfile's decision for the channel its
caller shows; not a preview, GetProfile's decision for a channel nobody showed:
protocol.Decide's `log`), under the sealed id its caller
sees, with the customer's profile as the decision saw it (a one-customer block), the model
inputs (the engine's decision memo keeps them), the eligible actions (the engine notes them
from the kernel's reason codes while the log is on) and the shown actions with their selection
probabilities (for a decision that showed nothing, the probability of showing nothing); each
outcome the shard took that names a decision (Respond, and the impressions a Decide records),
under the id its caller sent. Decisions replayed from the journal are not made again, so
nothing is logged twice by a recovery.

Where: the store's log of this shard's name (storage/decision_logs.py), beside the journal.
Records are collected during a round and handed over after it (`flush`); a `LogWriter` writes
them, inline for a bare Shard and, under a ShardHost, on a thread of its own, coalescing the
rounds that wait (group commit), and waiting DECISION_LOG_WRITE_S after a round for more to
come: on this 2-core machine a write of its own (the thread's wake-up after that wait, open,
write, fsync, close) cost about 520 µs of CPU, 320 µs to 1 ms (python -m bench.costs,
bench/results/costs-20261206T003319Z.md), as much as the rest of a Decide in the shard, and at a few
hundred decisions per second each round would otherwise be written alone. An export waits
for what was submitted before it (`written`). So logging never delays an answer, and a crash
loses the records not yet written (and, with a directory store, not yet fsynced): the log is
evidence, not state, and nothing acknowledged depends on it. A writer that falls behind by
DECISION_LOG_PENDING records drops new ones, counted (`decision_log_dropped`); a store that
fails is counted (`decision_log_failures`) and logged, and never fails a round.

Retention: `trim` every DECISION_LOG_TRIM_S drops what was logged more than
DECISION_LOG_RETENTION_S ago, then the oldest while the log is over DECISION_LOG_MAX_BYTES,
from the shard's log and from the logs of shards no longer live that it reads for exports
(`to_read`: no writer is left to trim them), removing such a log once it is empty. Between
a trim's pages the writer appends what was submitted meanwhile (`_append_waiting`), so a long
trim holds the appends up for a page, not for the trim.
ForgetCustomer: `forget` drops the customer's records not yet written and has the writer
erase its records from every log of the store (a shared store holds the logs of shards that
owned the partition before), after writing what came before; a log whose erasure fails is
erased again with the next trim, and holds up neither the appends nor the trim. Until an
erasure is done, the partition snapshots name its customer (durability.py: `unerased`), so a
restart asks for it again when the journal no longer holds the Forget that asked first; once
it is done, the writer hands the customer back (`erased`) and its partition is snapshotted
again without it.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import msgpack
import numpy as np

from kairos.core.catalog import MAX_TOP_K
from kairos.core.decision import Decision

from kairos.cluster.evidence.records import (DECISION, OUTCOME, OUTCOMES_PER_DECISION,
                                             DecisionPage, DecisionRecord, OutcomeRecord,
                                             PageOutcomes, decision_key, decision_row, kind_of,
                                             pack_outcome, unpack)
from kairos.cluster.protocol import Outcome
from kairos.cluster.settings import (DECISION_LOG, DECISION_LOG_MAX_BYTES,
                                     DECISION_LOG_PENDING, DECISION_LOG_RETENTION_S,
                                     DECISION_LOG_TRIM_S, DECISION_LOG_WRITE_S)
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.storage.blocks import pack_one
from kairos.cluster.storage.decision_logs import Entry
from kairos.cluster.storage.store import DecisionLogLike, Store, StoreUnavailable

log = logging.getLogger("kairos.shard")
IMPRESSION = "impression"  # the outcome a Decide with record_impression logs per action shown
# How far past a page's last decision an export reads each log for decisions logged at the
# same moment (written in another order than their ids sort) or under a clock stepped back
LOG_ORDER_SLACK_S = 1.0
_packb = msgpack.Packer(use_bin_type=True).pack  # msgpack.packb makes a Packer per call


class DecisionLog:
    def __init__(self, ctx: ShardContext, enabled: bool = bool(DECISION_LOG)):
        self._ctx = ctx
        self.enabled = enabled
        ctx.engine.keep_eligible = enabled
        self.writer = LogWriter(ctx.store, ctx.name, ctx.counts)
        self._entries: list[Entry] = []  # this round's
        self._forgotten: set[str] = set()
        self._trimmed = ctx.clock()

    def decided(self, decision: Decision, sealed_id: str, now: float,
                context: dict[str, Any] | None, pushed: bool = False) -> None:
        """Log a decision as the engine made it (`decision`, whose id the engine's memo
        knows), under the id its caller sees; `pushed` to a watch, or answered."""
        if not self.enabled:
            return
        engine = self._ctx.engine
        c = engine.compiled
        predictors = engine.inputs_of(decision.decision_id)
        inputs = {} if predictors is None else dict(zip(c.predictor_names, predictors.tolist()))
        codes = engine.eligible.pop(decision.decision_id, None)
        eligible = [] if codes is None else [c.action_ids[a] for a in codes.tolist()]
        customer_id = decision.customer_id
        profile = pack_one(engine, customer_id) if customer_id in engine.table else b""
        # the record's list as pack_decision makes it, without the frozen records (their
        # fields set one by one cost some 7 us a decision)
        record = decision_row(
            sealed_id, now, customer_id, decision.channel, decision.placement,
            decision.catalog_version, decision.model_version, _loggable(context or {}), inputs,
            profile, eligible,
            [[a.action_id, slot, a.selection, a.propensity, a.priority]
             for slot, a in enumerate(decision.actions)], decision.control, pushed,
            decision.nothing_selection)
        self._entries.append((self._ctx.clock(), customer_id, _packb(record)))

    def outcome(self, o: Outcome, value: float | None) -> None:
        """Log an outcome the shard took that names a decision (`o.decision_id` as its
        caller sent it); offline feedback names none and joins nothing."""
        if not self.enabled or o.decision_id is None:
            return
        record = OutcomeRecord(o.decision_id, o.customer_id, o.action_id, o.outcome,
                               float(value or 0.0), float(o.when))
        self._entries.append((self._ctx.clock(), o.customer_id,
                              _packb(pack_outcome(record))))

    def forget(self, customer_id: str) -> None:
        """ForgetCustomer: nothing of the customer stays in the log, written or not (even when
        the log is off now: it may have been on)."""
        self._forgotten.add(customer_id)
        self._entries = [e for e in self._entries if e[1] != customer_id]

    def unerased(self) -> set[str]:
        """The customers whose erasure from the logs is not done yet (or has failed)."""
        return self._forgotten | self.writer.unerased()

    def erased(self) -> set[str]:
        """The customers whose erasure was done since the last call: a snapshot written
        before may still name them (durability.py writes their partitions again)."""
        return self.writer.erased()

    def flush(self) -> None:
        """Hand the round's records and erasures to the writer; forget the eligible actions of
        the round's decisions that were not logged (watched views whose best action stayed)."""
        self._ctx.engine.eligible.clear()
        if self._entries or self._forgotten:
            entries, self._entries = self._entries, []
            forgotten, self._forgotten = self._forgotten, set()
            self.writer.submit(entries, forgotten)

    def trim(self) -> None:
        """Apply the retention bounds, every DECISION_LOG_TRIM_S."""
        now = self._ctx.clock()
        if now - self._trimmed >= DECISION_LOG_TRIM_S:
            self._trimmed = now
            self.writer.submit([], set(), (now - DECISION_LOG_RETENTION_S,
                                           DECISION_LOG_MAX_BYTES))


def _loggable(context: dict[str, Any]) -> dict[str, Any]:
    """The context as exports write it (JSON): a vector the gateway passed on packed (float64
    bytes, little-endian) as its numbers, which the engine takes as well (replay does)."""
    return {k: np.frombuffer(v, "<f8").tolist() if isinstance(v, (bytes, bytearray)) else v
            for k, v in context.items()}


class LogWriter:
    """Writes a shard's log in order: what was submitted, then its erasures, then a trim.
    Inline until `in_background`, then on a thread of its own, taking every submission that
    waits at once."""

    def __init__(self, store: Store, name: str, counts: dict):
        self._store = store
        self._name = name
        self._counts = counts
        self._log = None  # opened on the first write (a directory log creates its folder)
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._forget: set[str] = set()
        self._trim: tuple[float, int] | None = None
        # customers whose erasure failed, by log (None: every log, when the store could not
        # list them)
        self._erase_again: dict[str | None, set[str]] = {}
        self._erasing: set[str] = set()  # the customers of the erasure under way
        self._erased: set[str] = set()  # erasures done, until the shard's thread takes them
        self._pool: ThreadPoolExecutor | None = None
        self._scheduled = False

    def in_background(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-log")

    def submit(self, entries: list[Entry], forget: set[str],
               trim: tuple[float, int] | None = None) -> None:
        with self._lock:
            room = DECISION_LOG_PENDING - len(self._entries)
            if len(entries) > room:
                self._counts["decision_log_dropped"] += len(entries) - max(room, 0)
                entries = entries[:max(room, 0)]
            if forget:  # handed over before the forget: the forgotten customer's records
                self._entries = [e for e in self._entries if e[1] not in forget]
            self._entries.extend(entries)
            self._forget |= forget
            self._trim = trim or self._trim
            if self._scheduled:
                return
            self._scheduled = self._pool is not None
        if self._pool is None:
            self._write()
        else:
            self._pool.submit(self._write)

    def unerased(self) -> set[str]:
        with self._lock:
            return self._forget | self._erasing | set().union(*self._erase_again.values())

    def erased(self) -> set[str]:
        """The customers erased from every log since the last call (taken)."""
        with self._lock:
            erased, self._erased = self._erased, set()
            return erased

    def written(self) -> None:
        """Wait until what was submitted before is written (blocking: call it on a thread)."""
        if self._pool is not None:
            self._pool.submit(_nothing).result()

    def close(self) -> None:
        """Write what waits, and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _write(self) -> None:
        if self._pool is not None:
            time.sleep(DECISION_LOG_WRITE_S)  # the rounds that come meanwhile join this write
        with self._lock:
            entries, forget, trim = self._entries, self._forget, self._trim
            self._entries, self._forget, self._trim = [], set(), None
            self._erasing = set(forget)
            self._scheduled = False
        # each step on its own: a log that cannot be erased must not stop the appends nor the
        # retention of this shard's own log, nor a failed trim undo an erasure that was done.
        # Erasures first: the entries of this write came after them (submit), so a record the
        # customer makes after its ForgetCustomer is kept. Those that failed are tried again
        # with the next trim: every write would re-read a log that keeps failing, and warn of it
        if forget or trim:
            self._erase(forget, retry=trim is not None)
        self._append(entries)
        if trim:
            self._tried("its retention is applied at the next trim",
                        lambda: self._own().trim(*trim, between_pages=self._append_waiting))

    def _append(self, entries: list[Entry]) -> None:
        # a store that failed the write may still hold it (a Redis primary whose replicas did
        # not confirm it in time): not retried, as a retry could write it twice
        if entries and self._tried(f"{len(entries)} records not acknowledged by the store, "
                                   f"not retried: lost unless it holds them",
                                   lambda: self._own().append(entries)):
            self._counts["decision_log_records"] += len(entries)

    def _append_waiting(self) -> None:
        """Between a trim's pages, what was submitted meanwhile: a long trim (a Redis log's
        pages cost some 21 µs an entry of 3,449 bytes, a decision record's mean size, a GiB's
        6.5 s, and 9 µs an entry of 200 bytes, a GiB's 45 s: bench.costs) would hold them past
        DECISION_LOG_PENDING. An erasure submitted meanwhile runs first: those records came
        after it, so a record a customer makes after its ForgetCustomer is kept."""
        with self._lock:
            entries, forget = self._entries, self._forget
            self._entries, self._forget = [], set()
            self._erasing = set(forget)
        if forget:
            self._erase(forget, retry=False)
        self._append(entries)

    def _own(self) -> DecisionLogLike:
        if self._log is None:
            self._log = self._store.decision_log(self._name)
        return self._log

    def _erase(self, forget: set[str], retry: bool) -> None:
        """Erase `forget` from every log of the store, and, on `retry`, what failed before
        from the logs it failed in; hold back for the next trim the logs that fail now (their
        customers only: once erased, a record the customer makes later is kept)."""
        with self._lock:
            again = self._erase_again if retry else {}
            if retry:
                self._erase_again = {}
            everywhere = forget | again.pop(None, set())
            self._erasing = everywhere.union(*again.values())
        if not everywhere and not again:
            return
        # a log that failed before and is gone since holds nothing. Listed first: on Redis the
        # listing begins the erasure pass, whose logs share one WAIT (storage/redis_log.py)
        listed: list[str] = []
        failed: dict[str | None, set[str]] = {None: everywhere, **again}
        if self._tried("its erasures are tried again with the next trim",
                       lambda: listed.extend(self._store.decision_logs())):
            failed = {}
        for name in listed:
            ids = everywhere | again.get(name, set())
            if ids and not self._tried(f"erasing from {name}: tried again with the next trim",
                                       lambda: self._count_erased(name, ids)):
                failed[name] = ids
        with self._lock:
            for name, ids in failed.items():
                self._erase_again.setdefault(name, set()).update(ids)
            # erased from every log they were asked of: done, whatever fails later
            self._erased |= everywhere.union(*again.values()) - set().union(*failed.values())
            self._erasing = set()

    def _count_erased(self, name: str, ids: set[str]) -> None:
        self._counts["decision_log_erased"] += self._store.decision_log(name).erase(ids)

    def _tried(self, consequence: str, step: Callable[[], object]) -> bool:
        """Whether `step` succeeded; a failure is counted and logged with its consequence (on
        this thread, nobody else would see it)."""
        try:
            step()
            return True
        except Exception as exc:
            self._counts["decision_log_failures"] += 1
            what = str(exc) if isinstance(exc, (StoreUnavailable, OSError)) else \
                f"{type(exc).__name__}: {exc}"
            log.warning("%s: decision log: %s (%s)", self._name, what, consequence)
            return False


def _nothing() -> None:
    """What `written` waits for: the writer's thread takes its work in order."""


def to_read(store: Store, name: str, live: Iterable[str]) -> list[str]:
    """The logs shard `name` reads for an export: its own; with a shared store, if it is the
    first of the `live` shards, also those of shards no longer live (scaled away, or renamed),
    whose logs stay where they were written (the controller trims them: rounds.py)."""
    live = sorted(live)
    orphans = sorted(set(store.decision_logs()) - set(live)) \
        if store.shared and live and name == live[0] else []
    return [name, *orphans]


def read(store: Store, names: Iterable[str], query: DecisionPage | PageOutcomes,
         deadline: float = math.inf) -> tuple[list, bool | int]:
    """What an export asks a shard for, from the named logs of the store; TimeoutError once
    past `deadline` (time.monotonic()), when its caller has stopped waiting."""
    if isinstance(query, DecisionPage):
        return read_decisions(store, names, query, deadline)
    return read_outcomes(store, names, query, deadline)


def _in_time(deadline: float) -> None:
    """A read nobody waits for any more stops: it would hold one of the shard's read threads
    (host.py `read_log`) for the rest of a long log."""
    if time.monotonic() > deadline:
        raise TimeoutError("the decision log's read went past its caller's deadline")


def read_decisions(store: Store, names: Iterable[str], query: DecisionPage,
                   deadline: float = math.inf
                   ) -> tuple[list[tuple[float, DecisionRecord]], bool]:
    """The decisions `query` asks for, from the named logs of the store, each with the time it
    was logged; whether more were logged. A log is in the order it was written, which is the
    order of its times (ties aside, and unless its shard's clock stepped back): so a log is
    left once it is LOG_ORDER_SLACK_S past the first `limit` + 1 found, and a page costs what
    it holds, not what the range holds. At most two pages are held however many logs."""
    found: list[tuple[float, str, DecisionRecord]] = []
    since = query.since if query.after is None else max(query.since, query.after[0])
    keep = query.limit + 1
    for name in names:
        bound = found[-1][0] if len(found) == keep else math.inf  # the page's last, so far
        for logged, _, data in store.decision_log(name).read(since, query.until):
            _in_time(deadline)
            if logged > bound + LOG_ORDER_SLACK_S:
                break
            if kind_of(data) == OUTCOME:  # skipped unpacked; `unpack` refuses a foreign kind
                continue
            record = unpack(msgpack.unpackb(data, raw=False))
            if (query.after is not None and (logged, record.decision_id) <= query.after) or \
                    (query.channel is not None and record.channel != query.channel):
                continue
            found.append((logged, record.decision_id, record))
            if len(found) >= 2 * keep:
                bound = _pruned(found, keep)
        _pruned(found, keep)
    return [(logged, record) for logged, _, record in found[:query.limit]], len(found) == keep


def _pruned(found: list, keep: int) -> float:
    """Keep the first `keep` by (time logged, id); the time of the last one kept (inf while
    fewer were found)."""
    found.sort(key=lambda f: f[:2])
    del found[keep:]
    return found[-1][0] if len(found) == keep else math.inf


def read_outcomes(store: Store, names: Iterable[str], query: PageOutcomes,
                  deadline: float = math.inf) -> tuple[list[OutcomeRecord], int]:
    """The outcomes `query` asks for, from the named logs of the store, in the order they were
    logged; how many more there were (past their decision's bound)."""
    kept: list[tuple[float, OutcomeRecord]] = []
    counted: Counter = Counter()  # by (decision key, whether an impression)
    cut = 0
    for name in names:
        for logged, _, data in store.decision_log(name).read(query.since, query.until):
            _in_time(deadline)
            if kind_of(data) == DECISION:  # most are, a few kB each: skipped unpacked
                continue
            record = unpack(msgpack.unpackb(data, raw=False))
            key = decision_key(record.customer_id, record.decision_id)
            if key in query.keys:
                kind = (key, record.outcome == IMPRESSION)
                counted[kind] += 1
                if counted[kind] <= (MAX_TOP_K if kind[1] else OUTCOMES_PER_DECISION):
                    kept.append((logged, record))
                else:
                    cut += 1
    kept.sort(key=lambda o: o[0])
    return [o for _, o in kept], cut
