"""Stores: where a shard's customers, its partitions' snapshots and its journal live.

This module is the interface (Orleans calls these storage providers); providers.py opens one
of the three implementations by URL:

- `MemoryStore` (memory_store.py): in this process. Volatile; for tests and for runs that need
  no durability. Several in-process shards may share one, as they share a directory or a Redis.
- `DirectoryStore` (directory_store.py): a local directory, the embedded default. Survives
  the process (and, with the journal policy "fsync", the machine); every shard of this machine
  can read it, so a partition can be recovered by any shard on the machine.
- `RedisStore` (redis_store.py): a real Redis server, for several machines and Kubernetes:
  any node can recover any partition.

What a store keeps, keyed by partition so that it moves with the partition:
- **homes**: a customer's packed state, written when the customer is passivated and kept while
  it is resident again, until the next passivation replaces it or ForgetCustomer deletes it;
- **snapshots**: one per partition, its resident customers, idempotency keys and alias
  directory, naming the journal and LSN they cover;
- **journals**: one per shard (see journal.py), the changes since the snapshots;
- **meta**: small named blobs (the controller's map);
- **decision logs**: one per shard name (decision_logs.py), what the shard decided and the
  outcomes it took, for `kairos log export` and replay; bounded by retention, erased by
  ForgetCustomer. Not keyed by partition: a log stays where it was written when partitions
  move, and readers look at every log of the store.

Fencing: when the controller replaces a shard whose node left, the replacement recovers the
dead shard's partitions from the snapshots and the dead shard's journal. Should that shard in
fact still run (a node the GCS declared dead that runs on a while, a partitioned network), what
it acknowledged after the replacement read its journal would be lost. So the replacement first
fences that journal (`fence_journal`), durably, and only then reads: its writer checks the
fence after each write (and sync) and before acknowledging, raising JournalFenced once it is
there, so everything it acknowledged is in what the replacement reads and nothing later is
acknowledged (a batch the fence overtook may be in the journal, never acknowledged). A fenced
journal cannot be opened for writing again, and keeps its fence when it is dropped. Its
shard's snapshot and home writes and home deletes name it (`unless_fenced`) and are refused
once it is fenced, in one step with the write, so none lands over its heir's. Another
shard's journal is read with `read_journal`, which changes nothing (its writer may run): a torn
tail ends the replay there, without being cut.

Owners: a shard name may run twice at once, in two incarnations (a second cluster that resumed
from a controller's lapsed claim; Ray restarting a shard whose node it declared dead while the
old process runs on), both writing the same journal and snapshots: the old one's snapshot,
written over the newer one after the journal was truncated behind it, lost acknowledged
events. So each start of a shard by the controller claims its journal for its incarnation
(`own_journal` with `claim`), and its store object writes for that journal (appends, syncs'
acknowledgements aside, truncations, take-backs, compactions, and every write `unless_fenced`
names it) only while the journal's owner is that incarnation, checked in one step with the
write as the fence is: JournalFenced otherwise, the write not made. A rebuild of the same
incarnation does not claim: it finds the journal its own, or stays down. A store without an
owner for a journal (written by an older Kairos) is claimed by the first start. Behind it, a
snapshot written with its `lsn` is refused where the partition's newest one named the same
journal at a higher LSN (`snapshot_lsn` keeps it), and recovery reads that too: a snapshot
older than the newest written of its journal (an older Kairos wrote over it, or an operator
restored one) is StoreCorrupt, as the journal's records between may be gone.

Every failure to reach the store (disk full, Redis down) raises `StoreUnavailable`; a shard
that meets one answers UNAVAILABLE and rebuilds itself from the store once it is back. Damaged
data raises `StoreCorrupt`, a StoreUnavailable that names the file (or key) and offset: the
shard stays UNAVAILABLE until the damage is quarantined.

Snapshots are sealed (`seal`/`unseal` in sealed.py) by the shard before they reach a store, so
every store keeps them checksummed the same way.

Ownership: a store serves one cluster at a time. Two clusters on one store would both write
the same shards' journals (shard names are the same in every cluster) and corrupt them. So
the controller claims the store (`claim`, ownership.py) before its cluster writes anything,
and keeps the claim while it lives: a directory by an exclusive `flock` its process holds
(gone with the process), Redis by a lease the controller renews. A second cluster's claim
raises StoreInUse, naming the store and who holds it. And every shard checks, as it opens the
store to start or rebuild, that the store holds its controller's claim (`claimed_by`): else
the URL reaches another store from its node than from the controller's (a directory on each
node's own disk, `redis://localhost`), where nothing it writes is seen by the others
(StoreNotClaimed; ownership.py `check_claimed`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, Protocol

# a query parameter that carries a credential (password=, auth_token=, api_key=, ...)
# a parameter named for a secret, or whose name is percent-encoded (pass%77ord reads as password)
_PASSWORD_PARAM = re.compile(
    r"([?&](?:[^=&#]*(?:password|passwd|token|secret|key|auth)[^=&#]*|[^=&#]*%[^=&#]*)=)[^&#]*",
    re.IGNORECASE)


class StoreUnavailable(Exception):
    """The store could not be written or read; nothing was acknowledged."""


class JournalFenced(StoreUnavailable):
    """Another shard took this journal's partitions over (`Store.fence_journal`): its writer
    acknowledges nothing more, and it cannot be opened for writing again."""

    @classmethod
    def of(cls, name: str) -> JournalFenced:
        """Naming the journal (a plain constructor keeps the exception picklable)."""
        return cls(f"journal {name} is fenced: another shard recovered its partitions (the "
                   f"controller replaced this one), so nothing more written to it is "
                   f"acknowledged")

    @classmethod
    def stale(cls, name: str, partition: int, lsn: int, newer: int) -> JournalFenced:
        return cls(f"journal {name}: a snapshot of partition {partition} at LSN {lsn} is "
                   f"refused: one at LSN {newer} of the same journal was written (by another "
                   f"incarnation of the shard)")


class JournalDisowned(JournalFenced):
    """The journal's owner is not this incarnation of its shard (the module's text, "Owners"):
    the controller started another, or the store lost this one's claim (then the controller
    starts this one again: control/rounds.py)."""

    @classmethod
    def of(cls, name: str) -> JournalDisowned:
        return cls(f"journal {name} is not this incarnation's (the controller started another "
                   f"incarnation of its shard, or the store lost this one's claim), so this one "
                   f"writes nothing more to it, nor any snapshot or home of its partitions")


class StoreInUse(Exception):
    """Another cluster holds the store (`Store.claim`): this one must write nothing to it."""

    lease: bytes | None = None  # what the holder last wrote, where it renews a lease (Redis)
    holder: str = ""  # the holder, as it described itself

    @classmethod
    def of(cls, url: str, holder: str, lease: bytes | None = None) -> StoreInUse:
        """Naming the store (without its password) and its holder, as it described itself;
        `lease` and `holder` set as attributes, as a plain constructor keeps the exception
        picklable."""
        exc = cls(f"the store {redact(url)} is in use by another Kairos cluster"
                  + (f" (its controller: {holder})" if holder else "")
                  + ": a store serves one cluster at a time. Stop that cluster first (`kairos "
                    "down` with its KAIROS_HOME), or give this one a store of its own "
                    "(--store, KAIROS_STORE)")
        exc.lease, exc.holder = lease, holder
        return exc


class StoreNotClaimed(StoreUnavailable):
    """The store a shard opened does not hold its cluster's claim (`Store.claimed_by`): not
    the store the controller claimed (a directory on this node's own disk, a Redis URL that
    reaches another server from this node), or its claim lapsed a moment (ownership.py
    `check_claimed`). The shard writes nothing to it."""


class StoreCorrupt(StoreUnavailable):
    """What the store holds is damaged (a journal frame, a snapshot): the shard refuses to
    serve rather than lose or repeat acknowledged changes, and tries again until an operator
    has quarantined the damaged file (README, "Corruption")."""


def redact(url: str) -> str:
    """A store URL fit to print or log: its credentials (`user:password@`, `:password@`, a
    `password=`, `token=` or like parameter) shown as `***`, e.g. `redis://***@host:6379/0`.
    Whatever names a store goes through this before it is printed, logged or put in an error
    message."""
    url = str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # "memory", a directory
    if "@" in rest:  # the last "@" ends the credentials, whatever they hold ("/", "?", "#")
        rest = "***@" + rest.rpartition("@")[2]
    head, q, query = rest.partition("?")
    return f"{scheme}://{head}" + (_PASSWORD_PARAM.sub(r"\1***", q + query) if q else "")


class JournalReader(Protocol):
    def replay(self, after_lsn: int = 0, decode: Callable[[Any, int], Any] | None = None
               ) -> Iterator[tuple[int, Any]]:
        """The records above `after_lsn`, in order; each through `decode(record, format)` if
        given, with the record format its batch was written in (journal.py)."""


class JournalLike(JournalReader, Protocol):
    last_lsn: int
    unsynced: bool  # appended with sync=False and not made durable yet

    def append(self, records: list[Any], sync: bool = True) -> int:
        """The batch's last LSN, once it is durable per the policy (or, with `sync` false,
        written: `sync` then acknowledges it); JournalFenced if the journal was fenced before
        that, the batch then being unacknowledged."""

    def sync(self) -> None:
        """Make what was appended durable; may run on another thread than append.
        JournalFenced, as `append`, if the journal was fenced before it finished."""

    def check_fence(self) -> None:
        """JournalFenced if the journal is fenced, or owned by another incarnation of its
        shard (JournalDisowned): what names it (a snapshot) or drops what it holds (a
        truncation) must not follow once another shard has taken it over."""

    def skip_past(self, lsn: int) -> None:
        """Give out no LSN up to `lsn`, which a snapshot of this journal covers past its end
        (recovery; journal.py, "Lost tails"); StoreCorrupt where only damage can do that."""

    def truncate(self, upto_lsn: int) -> int: ...

    def retract(self, after_lsn: int) -> bool:
        """Take back the last batch, appended after `after_lsn`, if it is not yet durable
        for good (its round failed once it was written); whether nothing after it is left."""

    def compact(self, drop: Callable[[Any], bool],
                decode: Callable[[Any, int], Any] | None = None) -> int:
        """Drop the records `drop` selects (seen through `decode`, as in `replay`), leaving
        their LSNs empty; how many were dropped."""

    def close(self) -> None: ...


class DecisionLogLike(Protocol):
    """Entries (time logged, customer id, packed record), oldest first (decision_logs.py)."""

    def append(self, entries: list[tuple[float, str, bytes]]) -> None: ...

    def read(self, since: float, until: float) -> Iterator[tuple[float, str, bytes]]:
        """The entries logged within [since, until]."""

    def trim(self, before: float, max_bytes: int, orphan: bool = False,
             between_pages: Callable[[], object] | None = None) -> int:
        """Drop entries logged before `before`, then the oldest while over `max_bytes`
        (whole segments where the store keeps them so: an implementation may keep a little
        more); how many segments or entries went. `orphan`: the log of a shard gone, removed
        once empty. `between_pages`: called between pages where a trim takes several (Redis),
        so its caller's appends wait a page."""

    def erase(self, customer_ids: set[str]) -> int:
        """Drop every entry of these customers; how many went."""

    def size(self) -> int: ...


class Store(Protocol):
    url: str
    shared: bool  # every shard that opens `url` sees the same data

    def put(self, partition: int, customer_id: str, blob: bytes,
            unless_fenced: str | None = None) -> None:
        """Write a customer's home; with `unless_fenced`, as `put_snapshots`: a shard
        replaced while it still runs must not write over its heir's newer homes."""

    def put_many(self, homes: Iterable[tuple[int, str, bytes]],
                 unless_fenced: str | None = None, lsn: int | None = None) -> None:
        """Write customers' homes, (partition, customer id, blob), as `put` does each, with
        one fence check per transaction of PIPELINE_BYTES (Redis) or chunk of FENCE_HOLD_HOMES
        (a directory), not per home: a passivation writes thousands. `homes` is read as it is
        written (its blobs need not all be in memory at once); a failure may leave some
        written. With `lsn`, the homes name journal `unless_fenced` up to it, and a store
        that makes the journal durable before they name it does so once, up to it."""

    def get(self, partition: int, customer_id: str) -> bytes | None: ...

    def get_many(self, partition: int, customer_ids: list[str]) -> list[bytes | None]:
        """The homes of these customers of the partition, in their order (None for one
        without), in one round trip where the store has them (Redis: an HMGET); the caller
        bounds how many. StoreCorrupt, as `get`, if one of them is damaged (`intact_homes`
        tells which)."""

    def delete(self, partition: int, customer_id: str, unless_fenced: str | None = None
               ) -> None:
        """Delete a customer's home; with `unless_fenced`, as `put`."""

    def delete_many(self, homes: Iterable[tuple[int, str]], unless_fenced: str | None = None
                    ) -> None:
        """Delete customers' homes, (partition, customer id), as `put_many` writes them."""

    def take_partition(self, partition: int) -> dict[str, bytes]:
        """Remove and return a partition's homes (a move between unshared stores). Only a
        store that is not `shared` is asked (handoff.py): of the three, the memory store that
        `open_store("memory")` gives each shard, whose homes die with its process anyway. A
        shared one (a directory, Redis) keeps a moving partition's homes where they are, so
        a process that dies mid-move loses none
        (tests/unit/shard/test_directory_handover_keeps_homes.py)."""

    def count(self, partitions: Iterable[int]) -> int:
        """Customers with a home in these partitions."""

    def put_snapshots(self, snapshots: dict[int, bytes], unless_fenced: str | None = None,
                      lsn: int | None = None) -> None:
        """Write partitions' snapshots; with `unless_fenced`, only while that journal is not
        fenced, atomically with fence_journal (JournalFenced otherwise): a shard replaced
        while it still runs must not write over its heir's snapshots. With `lsn` (they cover
        journal `unless_fenced` up to it), JournalFenced where a partition's `snapshot_lsn`
        names that journal at a higher LSN, and else that becomes its `snapshot_lsn`."""

    def get_snapshot(self, partition: int) -> bytes | None: ...

    def snapshot_lsn(self, partition: int) -> tuple[str, int] | None:
        """The journal and LSN of the newest snapshot of the partition written with `lsn`."""

    def own_journal(self, name: str, owner: str, claim: bool) -> None:
        """Write journal `name` (and `unless_fenced` it) through this store object as the
        incarnation `owner` (module text, "Owners"): with `claim`, make it the journal's owner
        (a start of the shard by the controller); without, JournalFenced unless it is (a
        rebuild). Before the journal is opened."""

    def journal(self, name: str, policy: str = "fsync") -> JournalLike:
        """Shard `name`'s own journal, to write (JournalFenced if it is fenced)."""

    def read_journal(self, name: str) -> JournalReader:
        """Another shard's journal, to replay only: opening and reading it change nothing
        (its writer may still run), and a torn tail ends the replay without being cut."""

    def fence_journal(self, name: str) -> None:
        """Fence the journal (see the module's text), durably before returning: from then on
        its writer acknowledges nothing. For a shard the controller stopped for good
        (replaced, or retired by a scale-down, drain or re-placement), which may run on cut
        off from Ray: the fence outlives drop_journal, one small key or file per such shard."""

    def drop_journal(self, name: str) -> None:
        """Delete the journal; a fenced one keeps its fence (its writer may still run)."""

    def put_meta(self, key: str, blob: bytes) -> None: ...

    def decision_log(self, name: str) -> DecisionLogLike:
        """The decision log of shard `name` (created empty the first time)."""

    def decision_logs(self) -> list[str]:
        """The names of the decision logs the store holds."""

    def get_meta(self, key: str) -> bytes | None: ...

    def claim(self, owner: str, holder: str) -> None:
        """Claim the store for the cluster `owner` names (a token its controller keeps across
        restarts; `holder` describes the controller, for another cluster's error), or renew
        the claim: StoreInUse if another owner holds it. A claim lasts while this process
        lives, and no longer than ownership.LEASE_S past the last claim where it is a lease;
        its holder claims again every ownership.RENEW_S (ownership.py)."""

    def release(self, owner: str) -> None:
        """Give the claim up, if `owner` holds it (a controller that stops)."""

    def claimed_by(self) -> tuple[str, str] | None:
        """The claim the store holds now, as (owner, holder) where `claim` wrote them, or
        None: a lease run out or given up (Redis), a lock no live process holds (a
        directory). Read without writing anything, by a shard that checks the store it opened
        is its cluster's (ownership.py `check_claimed`); a claim made or given up meanwhile
        may be seen either way. The owner is "" for a claim held that names none (yet): a
        directory's read while its claim is written, or an older Kairos's (directory_claim.py)."""

    def erased(self) -> None:
        """A step of ForgetCustomer's erasure wrote its last change (durability.py): a store
        that keeps a history of its writes beside its data (Redis's append-only file) has it
        drop them, best effort and in the background (redis_aof.py); the others, nothing."""


def intact_homes(store: Store, partition: int, customer_ids: list[str]) -> list[bytes | None]:
    """`store.get_many`, but with None for a damaged home (StoreCorrupt) rather than failing
    them all: one damaged home must cost only its own customer. When the batch fails, each
    home is read alone (a round trip each on Redis, whose batch raises no StoreCorrupt)."""
    try:
        return store.get_many(partition, customer_ids)
    except StoreCorrupt:
        pass
    homes: list[bytes | None] = []
    for customer_id in customer_ids:
        try:
            homes.append(store.get(partition, customer_id))
        except StoreCorrupt:
            homes.append(None)
    return homes
