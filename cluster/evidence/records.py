"""The decision log's records, as shards write them and as `kairos log export` and `kairos
replay` read them.

A `DecisionRecord` holds what one decision saw and did: who, where, when, which catalog and
model versions, the customer's profile as a one-customer block (storage/blocks.py, so a
candidate catalog with other slots can load it), the model inputs by name, the eligible
actions and the shown ones with the probability that the policy shows each at its slot (or,
for a decision that showed nothing, the probability that it shows nothing). The outcomes that
name the decision arrive later as `OutcomeRecord`s and are joined to it on export. Exports
are JSON lines (bytes as base64) or Parquet (pyarrow).
"""
from __future__ import annotations

import base64
import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple

import msgpack

from kairos.core.rules import MAX_NUMBER

FORMAT = 1  # of the records below; a reader refuses another
# The longest JSON line a reader takes: a record is a decision's profile block (base64) and a
# few hundred bytes, and the shards' own frames stop at 64 MiB (storage/frames.py); a longer
# line is refused by number rather than read whole into memory.
MAX_LINE_BYTES = 64 << 20
Target = str | Path | BinaryIO  # where a writer writes: a file's name, or a binary file open


@dataclass(frozen=True)
class ShownAction:
    action_id: str
    slot: int  # 0 = first shown
    selection: float  # P(the policy shows this action at this slot | what it saw)
    propensity: float  # the model's response probability, as drawn
    priority: float


@dataclass(frozen=True)
class OutcomeRecord:
    decision_id: str
    customer_id: str
    action_id: str
    outcome: str  # as the shard took it: "impression", "accept", "reject", "ignore", "convert"
    value: float  # the conversion value the outcome carried (0 if none)
    time: float  # epoch seconds


@dataclass(frozen=True)
class DecisionRecord:
    decision_id: str
    time: float  # epoch seconds: the time the engine decided at
    customer_id: str
    channel: str
    placement: str
    catalog_version: str
    model_version: int
    context: dict[str, Any]  # the request's context, as the engine took it
    inputs: dict[str, float]  # the model inputs the decision saw, by predictor name
    profile: bytes  # blocks.pack of the customer's one-row block as the decision saw it
    eligible: tuple[str, ...]  # actions that passed rules and contact policies
    shown: tuple[ShownAction, ...]  # in slot order
    control: bool = False  # held back: a uniformly random eligible action (or none) shown
    outcomes: tuple[OutcomeRecord, ...] = field(default=())  # joined on export
    # pushed to a watch: a watched view is decided on every change of its customer and sent
    # (and logged) only when its best action changed, so `selection` is not the probability
    # that this record exists; replay and uplift leave pushes out
    pushed: bool = False
    # P(the policy shows nothing | what it saw), for a decision that showed nothing
    # (`Decision.nothing_selection`); None otherwise, and in logs written before it was kept,
    # where replay takes such a decision as certain (replay.rewards)
    nothing_selection: float | None = None

    def with_outcomes(self, outcomes: Iterable[OutcomeRecord]) -> "DecisionRecord":
        return DecisionRecord(**{**vars(self), "outcomes": tuple(outcomes)})


class LogFormatError(ValueError):
    """A log file that is not a Kairos decision log of this format (says where)."""


def to_json(record: DecisionRecord) -> dict[str, Any]:
    data = asdict(record)
    data["profile"] = base64.b64encode(record.profile).decode()
    data["format"] = FORMAT
    return data


def from_json(data: Any, where: str = "record") -> DecisionRecord:
    if not isinstance(data, dict):
        raise LogFormatError(f"{where}: not a decision record: not a JSON object "
                             f"({type(data).__name__})")
    try:
        if data.pop("format", FORMAT) != FORMAT:
            raise LogFormatError(f"{where}: format is not {FORMAT}")
        return _from_fields({**data, "profile": base64.b64decode(data["profile"],
                                                                 validate=True)}, where)
    except LogFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise LogFormatError(f"{where}: not a decision record: {exc}") from None


_NUMBER = (int, float)
_TYPES = {"decision_id": str, "time": _NUMBER, "customer_id": str, "channel": str,
          "placement": str, "catalog_version": str, "model_version": int, "context": dict,
          "inputs": dict, "profile": bytes, "eligible": list, "shown": list, "control": bool,
          "outcomes": list, "pushed": bool, "nothing_selection": (*_NUMBER, type(None))}
_OPTIONAL = {"control", "outcomes", "pushed", "nothing_selection"}  # logs written before
_SHOWN_TYPES = {"action_id": str, "slot": int, "selection": _NUMBER, "propensity": _NUMBER,
                "priority": _NUMBER}
_OUTCOME_TYPES = {"decision_id": str, "customer_id": str, "action_id": str, "outcome": str,
                  "value": _NUMBER, "time": _NUMBER}
# The smallest logged probability (other than a fallback's 0) a reader takes: replay divides
# by it, and a damaged 1e-200 would make one decision outweigh the log (or overflow). It is
# not the engine's floor, which has none: the models' part of a selection is at least
# (1 - s) / (1 + catalog.MAX_SELECTION_SAMPLES), 7.6e-6 at the largest control share s of 0.5
# (core/_kernel.pyx, _selection), but a held-back decision that drew an action the models
# would not show logs s / (its control-eligible actions), up to catalog.MAX_ACTIONS of them,
# and s may be any share above 0: s = 0.005 over 10,000 actions logs 5e-7. This refuses
# only what a share under 1e-5 over that many actions would log.
MIN_SELECTION = 1e-9
# Beyond its type, what a number that replay and uplift compute with must be (NaN or an
# infinity never is: one NaN value would make every estimate NaN), and how a refusal says it.
# Not here: the model inputs (a missing one is NaN as the engine saw it, and replay reads it
# as 0), and a shown action's propensity and priority, which nothing here reads (the engine
# can log a priority of inf) and which must not make a whole log unreadable.
_NONNEGATIVE = (lambda x: x >= 0.0, "0 or more")
# a conversion value as the API takes it: one of 1e300 made every value estimate inf
_VALUE = (lambda x: 0.0 <= x <= MAX_NUMBER, f"from 0 to {MAX_NUMBER:g}")
_PROBABILITY = (lambda x: x == 0.0 or MIN_SELECTION <= x <= 1.0,
                f"0 for a fallback, else from {MIN_SELECTION:g} to 1")
_BOUNDS = {"time": _NONNEGATIVE, "value": _VALUE, "selection": _PROBABILITY,
           "nothing_selection": _PROBABILITY}


def _check_types(data: dict[str, Any], where: str) -> None:
    """LogFormatError naming the first field of a record whose value has the wrong type (a
    reader would otherwise compute with it, or fail far from the line)."""
    _check_fields(data, _TYPES, _OPTIONAL, where)
    for field_, types in (("shown", _SHOWN_TYPES), ("outcomes", _OUTCOME_TYPES)):
        for k, item in enumerate(data.get(field_, ())):
            if not isinstance(item, dict):
                raise LogFormatError(f"{where}: {field_}[{k}] is not an object")
            _check_fields(item, types, set(), f"{where}: {field_}[{k}]")
    if not all(isinstance(a, str) for a in data["eligible"]):
        raise LogFormatError(f"{where}: eligible holds something not a string")
    if not all(isinstance(k, str) and _is(v, _NUMBER) for k, v in data["inputs"].items()):
        raise LogFormatError(f"{where}: inputs holds something not a name and a number")
    for name, value in data["inputs"].items():  # NaN and infinities pass: a missing input
        try:
            float(value)
        except OverflowError:
            raise LogFormatError(f"{where}: inputs[{name!r}] is beyond a float's range"
                                 ) from None


def _check_fields(data: dict[str, Any], types: dict[str, Any], optional: set[str],
                  where: str) -> None:
    for name, kind in types.items():
        if name not in data:
            if name in optional:
                continue
            raise LogFormatError(f"{where}: no field {name!r}")
        value = data[name]
        if not _is(value, kind):
            raise LogFormatError(f"{where}: field {name!r} is a {type(value).__name__}, "
                                 f"not {_named(kind)}")
        if name in _BOUNDS and value is not None:
            within, says = _BOUNDS[name]
            if not (_finite(value) and within(value)):
                raise LogFormatError(f"{where}: field {name!r} is {value!r}, not a finite "
                                     f"number ({says})")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond a float's range
        return False


def _is(value: Any, kind: Any) -> bool:
    """isinstance, but a boolean is no number (JSON's true is not 1)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def _named(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _from_fields(data: dict[str, Any], where: str) -> DecisionRecord:
    _check_types(data, where)
    try:
        return DecisionRecord(
            **{**data,
               "eligible": tuple(data["eligible"]),
               "shown": tuple(ShownAction(**s) for s in data["shown"]),
               "outcomes": tuple(OutcomeRecord(**o) for o in data.get("outcomes", ()))})
    except (KeyError, TypeError, ValueError) as exc:
        raise LogFormatError(f"{where}: not a decision record: {exc}") from None


def write_jsonl(records: Iterable[DecisionRecord], target: Target) -> int:
    """Write the records as JSON lines (ASCII: json's escapes); how many were written."""
    n = 0
    with _binary(target) as out:
        for record in records:
            out.write(json.dumps(to_json(record), separators=(",", ":")).encode() + b"\n")
            n += 1
    return n


def _binary(target: Target) -> contextlib.AbstractContextManager[BinaryIO]:
    """`target` opened to write bytes, or as it is if it is a file already (its caller's to
    close)."""
    if isinstance(target, (str, Path)):
        return open(target, "wb")
    return contextlib.nullcontext(target)


def read_jsonl(path: str | Path) -> Iterator[DecisionRecord]:
    """The records of a JSON lines file; LogFormatError naming the line for one that is not
    UTF-8, not JSON (nested past the parser's depth, or an integer past Python's digit
    limit, included), longer than MAX_LINE_BYTES, or not a record."""
    with open(path, "rb") as lines:
        for number, line in enumerate(iter(lambda: lines.readline(MAX_LINE_BYTES + 1), b""),
                                      1):
            if len(line) > MAX_LINE_BYTES:
                raise LogFormatError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} "
                                     f"bytes: not a decision record")
            if line.strip():
                try:
                    data = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is one
                    raise LogFormatError(f"{path}:{number}: not JSON in UTF-8: {exc}"
                                         ) from None
                yield from_json(data, f"{path}:{number}")


# -- as the shards store them (msgpack arrays, fields in declaration order) ---------------------

DECISION, OUTCOME = "d", "o"  # the first element of a stored record


def pack_decision(record: DecisionRecord) -> list:
    """A decision as a shard's log stores it (the outcomes are joined on export)."""
    return decision_row(
        record.decision_id, record.time, record.customer_id, record.channel, record.placement,
        record.catalog_version, record.model_version, record.context, record.inputs,
        record.profile, list(record.eligible),
        [[s.action_id, s.slot, s.selection, s.propensity, s.priority] for s in record.shown],
        record.control, record.pushed, record.nothing_selection)


def decision_row(decision_id: str, time: float, customer_id: str, channel: str,
                 placement: str, catalog_version: str, model_version: int,
                 context: dict[str, Any], inputs: dict[str, float], profile: bytes,
                 eligible: list[str], shown: list[list], control: bool, pushed: bool,
                 nothing_selection: float | None) -> list:
    """`pack_decision`'s list from a record's fields (`shown` as rows of action id, slot,
    selection, propensity, priority), for the shard that logs each decision: building the
    frozen records first cost some 7 us a decision."""
    return [DECISION, decision_id, time, customer_id, channel, placement, catalog_version,
            model_version, context, inputs, profile, eligible, shown, control, pushed,
            nothing_selection]


def pack_outcome(record: OutcomeRecord) -> list:
    return [OUTCOME, record.decision_id, record.customer_id, record.action_id, record.outcome,
            record.value, record.time]


def kind_of(stored: bytes) -> Any:
    """A stored record's kind (DECISION, OUTCOME), read without unpacking the rest: a reader
    after one kind skips the other for a fraction of the cost. None for what is not a
    msgpack array (`unpack` refuses it)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(stored)
    try:
        unpacker.read_array_header()
        return unpacker.unpack()
    except (ValueError, msgpack.UnpackException):
        return None


def unpack(stored: list) -> DecisionRecord | OutcomeRecord:
    """The record `pack_decision` or `pack_outcome` stored; LogFormatError for anything else."""
    try:
        if stored[0] == DECISION:
            # logs written before pushes were told apart end at `control`, those written
            # before the probability of nothing was kept at `pushed`
            (_, decision_id, time, customer_id, channel, placement, catalog_version,
             model_version, context, inputs, profile, eligible, shown, control,
             *later) = stored
            if len(later) > 2:
                raise ValueError(f"{len(stored)} fields")
            return DecisionRecord(decision_id, time, customer_id, channel, placement,
                                  catalog_version, model_version, context, inputs, profile,
                                  tuple(eligible), tuple(ShownAction(*s) for s in shown),
                                  control, pushed=bool(later and later[0]),
                                  nothing_selection=later[1] if len(later) > 1 else None)
        if stored[0] == OUTCOME:
            return OutcomeRecord(*stored[1:])
    except (TypeError, ValueError, IndexError) as exc:
        raise LogFormatError(f"not a stored log record: {exc}") from None
    raise LogFormatError(f"not a stored log record: kind {stored[0]!r}")


# -- what an export asks each shard for (shard/decisionlog.py reads it) --------------------------

# Outcomes other than impressions an export joins to one decision, at most: its customer may
# report OUTCOMES_PER_CUSTOMER a minute for a week, and a decision named by a client that
# retries must not make an export hold without bound. Impressions have a bound of their own:
# MAX_TOP_K, the most actions a placement shows. Both bounds are per shard's log.
OUTCOMES_PER_DECISION = 32

class DecisionPage(NamedTuple):
    """An export page's decisions: those logged within [since, until] (of `channel`, if
    given) after `after` (the last one of the page before: its time logged and id), the first
    `limit` in the order they were logged."""
    since: float
    until: float
    after: tuple[float, str] | None
    channel: str | None
    limit: int


class PageOutcomes(NamedTuple):
    """The outcomes logged within [since, until] that name an export page's decisions (their
    `decision_key`s), at most MAX_TOP_K impressions and OUTCOMES_PER_DECISION others each
    (shard/decisionlog.py)."""
    keys: frozenset[tuple[str, str]]
    since: float
    until: float


def decision_key(customer_id: str, decision_id: str) -> tuple[str, str]:
    """What a decision and the outcomes naming it share: the customer, and the engine's id
    and issue time of a sealed id (cluster/shard/outcomes.py), the same whichever of the
    decision's tags an outcome kept. The engine's id alone is not enough: its prefix, random
    per engine, is 32 bits, and logs outlive many shard processes."""
    return customer_id, ".".join(decision_id.split(".", 2)[:2])


def joined(decisions: Iterable[DecisionRecord], outcomes: Iterable[OutcomeRecord]
           ) -> list[DecisionRecord]:
    """The decisions in the order given, each with the outcomes that name it, in time order."""
    by_decision: dict[tuple[str, str], list[OutcomeRecord]] = {}
    for outcome in sorted(outcomes, key=lambda o: o.time):
        by_decision.setdefault(decision_key(outcome.customer_id, outcome.decision_id),
                               []).append(outcome)
    return [d.with_outcomes(by_decision.get(decision_key(d.customer_id, d.decision_id), ()))
            for d in decisions]


# -- Parquet (pyarrow) ---------------------------------------------------------------------------

def _schema():
    import pyarrow as pa  # only readers and writers of Parquet pay its import
    shown = pa.struct([("action_id", pa.string()), ("slot", pa.int32()),
                       ("selection", pa.float64()), ("propensity", pa.float64()),
                       ("priority", pa.float64())])
    outcome = pa.struct([("decision_id", pa.string()), ("customer_id", pa.string()),
                         ("action_id", pa.string()), ("outcome", pa.string()),
                         ("value", pa.float64()), ("time", pa.float64())])
    return pa.schema([
        ("decision_id", pa.string()), ("time", pa.float64()), ("customer_id", pa.string()),
        ("channel", pa.string()), ("placement", pa.string()),
        ("catalog_version", pa.string()), ("model_version", pa.int64()),
        ("context", pa.string()),  # JSON: its values are strings, numbers or vectors
        ("inputs", pa.map_(pa.string(), pa.float64())), ("profile", pa.binary()),
        ("eligible", pa.list_(pa.string())), ("shown", pa.list_(shown)),
        ("control", pa.bool_()), ("outcomes", pa.list_(outcome)), ("pushed", pa.bool_()),
        ("nothing_selection", pa.float64()),  # null but for decisions that showed nothing
    ], metadata={b"kairos_decision_log_format": str(FORMAT).encode()})


PARQUET_ROWS = 10_000  # records per row group written


def write_parquet(records: Iterable[DecisionRecord], target: Target) -> int:
    """Write the records as Parquet (nested lists as list<struct>, profile as binary); how
    many were written. Written a row group at a time, so memory stays bounded."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = _schema()
    n = 0
    with pq.ParquetWriter(str(target) if isinstance(target, Path) else target, schema) as out:
        rows: list[dict[str, Any]] = []
        for record in records:
            row = asdict(record)
            row["context"] = json.dumps(record.context, separators=(",", ":"))
            row["inputs"] = list(record.inputs.items())
            rows.append(row)
            if len(rows) == PARQUET_ROWS:
                out.write_table(pa.Table.from_pylist(rows, schema))
                n, rows = n + len(rows), []
        if rows or not n:
            out.write_table(pa.Table.from_pylist(rows, schema))
            n += len(rows)
    return n


def read_parquet(path: str | Path) -> Iterator[DecisionRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        source = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file not Parquet
        raise LogFormatError(f"{path}: not Parquet: {exc}") from None
    metadata = source.schema_arrow.metadata or {}
    if metadata.get(b"kairos_decision_log_format") != str(FORMAT).encode():
        raise LogFormatError(f"{path}: not a Kairos decision log of format {FORMAT}")
    missing = sorted(set(_TYPES) - _OPTIONAL - set(source.schema_arrow.names))
    if missing:  # a damaged footer's names, its metadata intact
        raise LogFormatError(f"{path}: no column {', '.join(map(repr, missing))}")
    batches, first = source.iter_batches(), 0  # rows numbered from the file's start
    while True:
        try:  # a damaged page: pyarrow's errors, an OSError naming no file (snappy's), a
            # string no longer UTF-8 (a ValueError as the rows are made)
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise LogFormatError(f"{path}: rows from {first}: unreadable: {exc}") from None
        if batch is None:
            return
        for number, row in enumerate(rows, first):
            where = f"{path}: row {number}"
            try:
                row["context"] = json.loads(row["context"])
                row["inputs"] = dict(row["inputs"])
            except (TypeError, ValueError, RecursionError) as exc:  # null, or not JSON
                raise LogFormatError(f"{where}: context or inputs unreadable: {exc}") from None
            yield _from_fields(row, where)
        first += batch.num_rows


def is_parquet(path: str | Path) -> bool:
    """Whether a log file of this name is Parquet (else JSON lines)."""
    return str(path).endswith(".parquet")


def write_records(records: Iterable[DecisionRecord], target: Target,
                  parquet: bool | None = None) -> int:
    """Parquet if `parquet` (by default: the file's name ends .parquet; a file open is
    written JSON lines), else JSON lines, to a file named or open; how many were written."""
    parquet = is_parquet(target) if parquet is None else parquet
    return (write_parquet if parquet else write_jsonl)(records, target)


def read_records(path: str | Path) -> Iterator[DecisionRecord]:
    return (read_parquet if is_parquet(path) else read_jsonl)(path)


class Unrepeated:
    """`records` with a decision the log named before left out, counted in `repeats`: exports
    of overlapping ranges put together (`cat`) hold a decision twice, and it would be weighed
    twice. The first is kept (a later export of it may have joined more outcomes: export the
    range once instead). Remembers each decision's id (some 100 bytes a decision)."""

    def __init__(self, records: Iterable[DecisionRecord]):
        self._records = records
        self.repeats = 0

    def __iter__(self) -> Iterator[DecisionRecord]:
        seen: set[str] = set()
        for record in self._records:
            if record.decision_id in seen:
                self.repeats += 1
                continue
            seen.add(record.decision_id)
            yield record

    def warning(self) -> list[str]:
        """What the report says of them, if any."""
        return [f"{self.repeats:,} decision record(s) named a decision the log held already "
                f"(exports of overlapping ranges put together?): each decision counted once, "
                f"as first read"] if self.repeats else []
