"""Requests for every kairos.v1 RPC, built from the .proto descriptors: valid, boundary and
malformed values, for the contract fuzzer (bench/fuzz.py).

The descriptors say which fields a request has and of what type; the running catalog says
which values are valid (channels, placements, event types and their fields, actions, context
keys). Each request is drawn in one of three modes:
  - valid: what a well-behaved channel sends;
  - boundary: valid shapes at their limits (empty, the longest allowed and one past it,
    extreme numbers, the ends of Timestamp's range);
  - malformed: wrong kinds of values, undeclared names, unknown enum numbers, and bytes that
    are not the message at all (random, truncated, a field with the wrong wire type).

Customers come from two pools. Ledger customers only ever receive events with an
idempotency key, of types that arm no timer, and are never linked or forgotten, so the fuzzer
can check at the end that every acknowledged event was applied exactly once. Chaos customers
get everything, LinkIdentity and ForgetCustomer included.
"""
from __future__ import annotations

import math
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message

from kairos.core.compiler import CompiledCatalog
from kairos.v1 import admin_pb2, decision_pb2

DECISION = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
MODES = ("valid", "boundary", "malformed")
MODE_WEIGHTS = (0.6, 0.25, 0.15)

LONG = 1 << 16  # a string far past every id limit, well inside the message limit
STRINGS = ("", "a", " ", "x" * 63, "x" * 64, "x" * 255, "x" * 256, "x" * 257, "x" * 1024,
           "é" * 300, "\x00", "a\x00b", "~anonymous", "../../etc/passwd", "<script>x</script>",
           "web ", "WEB", "\u202e", "😀" * 100)
NUMBERS = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0 ** 31 - 1, 2.0 ** 53, 2.0 ** 63, -2.0 ** 63, 1e12,
           1e300, -1e300, 5e-324, math.nan, math.inf, -math.inf)
INTS = (0, 1, -1, 2 ** 31 - 1, -2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, -2 ** 63)
UINT32S = (0, 1, 2, 3, 10, 2 ** 31, 2 ** 32 - 1)
# Timestamp's range is years 1..9999; the wire accepts any int64 seconds and int32 nanos
SECONDS = (0, -62135596800, -62135596801, 253402300799, 253402300800, 2 ** 62, -2 ** 62)
NANOS = (0, 999_999_999, 1_000_000_000, -1, 2 ** 31 - 1)
ALIAS_TYPES = ("cookie", "device", "email")
TYPE_NAMES = {d.FieldDescriptor.TYPE_STRING: "string", d.FieldDescriptor.TYPE_DOUBLE: "double",
              d.FieldDescriptor.TYPE_INT64: "int64", d.FieldDescriptor.TYPE_UINT64: "uint64",
              d.FieldDescriptor.TYPE_UINT32: "uint32", d.FieldDescriptor.TYPE_BOOL: "bool",
              d.FieldDescriptor.TYPE_ENUM: "enum", d.FieldDescriptor.TYPE_MESSAGE: "message"}


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    input: d.Descriptor
    output: d.Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def methods() -> list[Method]:
    """Every RPC of the contract, read from the descriptors (a new RPC is fuzzed unasked)."""
    return [Method(s.full_name, m.name, m.input_type, m.output_type,
                   m.client_streaming, m.server_streaming)
            for s in (DECISION, ADMIN) for m in s.methods]


def message_class(descriptor: d.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@dataclass(frozen=True)
class Spec:
    type: str  # string, int, float, bool, timestamp; vector (context only)
    values: tuple[str, ...] | None = None  # a string's allowed values, when enumerated
    size: int = 1  # a vector's numbers


@dataclass
class Vocabulary:
    """What the running catalog declares, and the customers the fuzzer uses."""

    catalog_text: str
    channels: list[str]
    placements: dict[str, list[str]]
    events: dict[str, dict[str, Spec]]  # event type -> field -> its declared type and values
    timerless: list[str]  # event types a caller may send that arm no timer
    senders: dict[str, list[str]]  # event type -> the channels that may send it
    context: dict[str, Spec]
    actions: list[str]
    ledger: list[str]
    chaos: list[str]
    shards: int
    decisions: list[tuple[str, str, str, str]] = field(default_factory=list)  # (id, customer,
    # channel, action) of decisions seen, for Respond

    @classmethod
    def of(cls, compiled: CompiledCatalog, text: str, shards: int, run: str,
           customers: int = 64) -> "Vocabulary":
        cat = compiled.catalog
        arming = {compiled.event_names[e] for e in compiled.timers_started_by}
        return cls(
            catalog_text=text,
            channels=list(compiled.channel_names),
            placements={c.name: [p.name for p in c.placements] for c in cat.channels},
            events={e.name: {f.name: Spec(f.type, f.values) for f in e.fields}
                    for e in cat.events},
            timerless=[e.name for i, e in enumerate(cat.events)
                       if e.name not in arming and compiled.event_sent[i]],
            senders={e.name: [c for c, ok in zip(compiled.channel_names,
                                                  compiled.event_channels[i]) if ok]
                     for i, e in enumerate(cat.events)},
            context={c.name: Spec(c.type, c.values, c.size) for c in cat.context},
            actions=list(compiled.action_ids),
            ledger=[f"fz-{run}-ledger-{i}" for i in range(customers)],
            chaos=[f"fz-{run}-chaos-{i}" for i in range(customers)],
            shards=shards)


@dataclass
class Request:
    """One call: the method, its request messages (several for a client stream) or raw bytes,
    and, for a ledger event, what the ledger must expect."""

    method: Method
    mode: str
    payloads: list[bytes]
    ledger: list[tuple[str, str]] = field(default_factory=list)  # (customer, idempotency key)


class Generator:
    def __init__(self, vocab: Vocabulary, seed: int):
        self.vocab = vocab
        self.rng = random.Random(seed)
        self._keys = 0
        self._recent: list[tuple[str, str]] = []  # (ledger customer, key): retried at times

    def request(self, method: Method) -> Request:
        mode = self.rng.choices(MODES, MODE_WEIGHTS)[0]
        if mode == "malformed" and self.rng.random() < 0.3:
            return Request(method, mode, [self._garbage(method.input)])
        n = self.rng.choice((1, 2, 5, 20)) if method.client_streaming else 1
        ledger: list[tuple[str, str]] = []
        payloads = []
        for _ in range(n):
            msg = self.message(method.input, mode, ledger)
            payloads.append(msg.SerializeToString())
        return Request(method, mode, payloads, ledger)

    # -- messages from descriptors --------------------------------------------------------------

    def message(self, desc: d.Descriptor, mode: str, ledger: list, depth: int = 0) -> Message:
        msg = message_class(desc)()
        special = getattr(self, f"_{desc.name}", None)
        if special is not None:
            special(msg, mode, ledger)
            return msg
        self._fill(msg, mode, ledger, depth, {})
        return msg

    def _fill(self, msg: Message, mode: str, ledger: list, depth: int, seen: dict) -> None:
        """Every field from the descriptor; one member of each oneof; semantic values where
        the field's name says what it holds (channel, placement, type, action_id, ...)."""
        chosen_oneofs = {o.name: self.rng.choice(o.fields)
                         for o in msg.DESCRIPTOR.oneofs}
        for f in msg.DESCRIPTOR.fields:
            if f.containing_oneof is not None and chosen_oneofs[f.containing_oneof.name] is not f:
                continue
            if mode == "boundary" and f.containing_oneof is None and self.rng.random() < 0.2:
                continue  # a field left out is its default: empty, zero
            if mode == "valid" and msg.DESCRIPTOR.name == "Outcome" and f.name == "value":
                kinds = f.containing_type.fields_by_name["outcome"].enum_type
                convert = kinds.values_by_name["CONVERT"].number
                if seen.get("outcome") == convert:  # only a convert carries a value
                    msg.value = self.rng.uniform(0, 1000)
                continue
            self._set(msg, f, mode, ledger, depth, seen)

    def _set(self, msg: Message, f: d.FieldDescriptor, mode: str, ledger: list, depth: int,
             seen: dict) -> None:
        if _is_map(f):
            target = getattr(msg, f.name)
            for key, value in self._map_entries(f, mode, seen):
                if isinstance(value, Message):
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif f.is_repeated:
            target = getattr(msg, f.name)
            for _ in range(self.rng.choice((0, 1, 2, 5))):
                if f.type == d.FieldDescriptor.TYPE_MESSAGE:
                    target.add().CopyFrom(self.message(f.message_type, mode, ledger, depth + 1))
                else:
                    target.append(self._scalar(f, mode, seen))
        elif f.type == d.FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, f.name).CopyFrom(self._sub(f, mode, ledger, depth, seen))
        else:
            value = self._scalar(f, mode, seen)
            setattr(msg, f.name, value)
            seen[f.name] = value

    def _sub(self, f: d.FieldDescriptor, mode: str, ledger: list, depth: int,
             seen: dict) -> Message:
        if f.message_type.full_name == "google.protobuf.Timestamp":
            return self._timestamp(mode)
        if f.message_type.name == "Alias":
            return self._alias(mode)
        if depth > 4:
            return message_class(f.message_type)()
        return self.message(f.message_type, mode, ledger, depth + 1)

    def _scalar(self, f: d.FieldDescriptor, mode: str, seen: dict) -> Any:
        named = self._named(f.name, mode, seen)
        if named is not None:
            return named
        kind = TYPE_NAMES.get(f.type)
        rng = self.rng
        if kind == "string":
            return self._string(mode, rng.choice(("a", "b", "c")))
        if kind == "double":
            return rng.choice(NUMBERS) if mode != "valid" else rng.uniform(-100, 100)
        if kind == "int64":
            return rng.choice(INTS) if mode != "valid" else rng.randint(-100, 100)
        if kind == "uint64":
            if mode != "valid":
                return rng.choice((0, 1, 2 ** 63, 2 ** 64 - 1))
            return rng.randint(0, 100)
        if kind == "uint32":
            return rng.choice(UINT32S) if mode != "valid" else rng.randint(0, 5)
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "enum":
            numbers = [v.number for v in f.enum_type.values]
            if mode == "malformed":
                return rng.choice((-1, 99, 2 ** 31 - 1, *numbers))
            return rng.choice(numbers[1:] or numbers) if mode == "valid" else rng.choice(numbers)
        raise TypeError(f"no values for {f.full_name} ({f.type})")

    def _named(self, name: str, mode: str, seen: dict) -> Any:
        """A value for a field whose name says what it holds, or None."""
        v, rng = self.vocab, self.rng
        pick = {
            "customer_id": lambda: rng.choice(v.chaos + v.ledger),
            "channel": lambda: rng.choice(v.channels),
            "type": lambda: rng.choice(list(v.events)),
            "placement": lambda: rng.choice(v.placements.get(seen.get("channel"), [""]) + [""]),
            "decide_placement": lambda: rng.choice(v.placements.get(seen.get("channel"), [""])
                                                   + [""]),
            "action_id": lambda: rng.choice(v.actions),
            "decision_id": lambda: (rng.choice(v.decisions)[0] if v.decisions else ""),
            "event_id": lambda: f"e{rng.randrange(1 << 30)}",
            "idempotency_key": lambda: f"k{rng.randrange(1 << 30)}",
            "yaml": lambda: v.catalog_text,
            "shards": lambda: v.shards,
            # the version a catalog call expects: valid calls expect none, since the fuzzer's
            # own rollbacks change what runs; any other is refused (FAILED_PRECONDITION)
            "expected_current_version": lambda: "",
            "to_version": lambda: "",
        }.get(name)
        if pick is None:
            return None
        if mode == "valid" or (mode == "boundary" and name in ("shards", "yaml")):
            if name == "shards" and mode == "boundary":
                return rng.choice((0, 1025, 2 ** 32 - 1, v.shards))
            if name == "yaml" and mode == "boundary":
                return rng.choice(("", v.catalog_text + "\n" + "#" * 1000))
            return pick()
        if name == "shards":
            return rng.choice((0, 2 ** 32 - 1, 1025))  # never a real rescale of the cluster
        if name == "yaml":
            return self._broken_catalog()
        return self._string(mode, pick() or "x")

    def _string(self, mode: str, valid: str) -> str:
        if mode == "valid":
            return valid
        if mode == "malformed" and self.rng.random() < 0.1:
            return "z" * LONG
        return self.rng.choice(STRINGS)

    def _map_entries(self, f: d.FieldDescriptor, mode: str, seen: dict
                     ) -> list[tuple[str, Any]]:
        value_desc = f.message_type.fields_by_name["value"]
        if value_desc.type == d.FieldDescriptor.TYPE_BYTES:  # DecideRequest.vectors
            return self._vectors(mode)
        declared = (self.vocab.events.get(seen.get("type"), {}) if f.name == "attributes"
                    else {name: spec for name, spec in self.vocab.context.items()
                          if spec.type != "vector"} if f.name == "context" else {})
        entries = []
        for name, spec in declared.items():
            if mode == "valid" or self.rng.random() < 0.7:
                entries.append((name, self._value(value_desc.message_type, spec, mode)))
        if mode != "valid":
            for _ in range(self.rng.choice((1, 2))):
                entries.append((self._string("malformed", "undeclared"),
                                self._value(value_desc.message_type, Spec("string"), mode)))
        return entries

    def _vectors(self, mode: str) -> list[tuple[str, bytes]]:
        """Packed little-endian float64 vectors: of the declared size when valid; else of
        another size, with NaN or huge numbers, or under an undeclared key."""
        rng = self.rng
        entries = []
        for name, spec in self.vocab.context.items():
            if spec.type == "vector" and (mode == "valid" or rng.random() < 0.7):
                size = spec.size if mode == "valid" else rng.choice(
                    (spec.size, spec.size + 1, 0, max(spec.size - 1, 0)))
                numbers = [rng.gauss(0.0, 1.0) for _ in range(size)]
                if mode != "valid" and numbers and rng.random() < 0.5:
                    numbers[rng.randrange(size)] = rng.choice(NUMBERS)
                entries.append((name, struct.pack(f"<{size}d", *numbers)))
        if mode != "valid":
            entries.append((self._string("malformed", "undeclared"),
                            bytes(rng.randrange(64) for _ in range(rng.choice((0, 7, 16))))))
        return entries

    def _value(self, desc: d.Descriptor, spec: Spec, mode: str) -> Message:
        """A kairos.v1.Value: of the declared type when valid, any kind with extremes else."""
        value, rng = message_class(desc)(), self.rng
        kind = spec.type if mode == "valid" else rng.choice(
            ("string", "int", "float", "bool", "timestamp", spec.type, "unset"))
        if kind == "string":
            value.string_value = self._string(mode, rng.choice(
                spec.values or ("a", "b", "gold", "web")))
        elif kind == "int":
            if rng.random() < 0.5 or mode == "valid":
                value.int_value = rng.randint(0, 1000) if mode == "valid" else rng.choice(INTS)
            else:
                value.number_value = rng.choice(NUMBERS)
        elif kind == "float":
            value.number_value = rng.uniform(0, 1000) if mode == "valid" else rng.choice(NUMBERS)
        elif kind == "bool":
            value.bool_value = rng.random() < 0.5
        elif kind == "timestamp":
            value.timestamp_value.CopyFrom(self._timestamp(mode))
        return value

    def _timestamp(self, mode: str) -> Message:
        ts = message_class(decision_pb2.Event.DESCRIPTOR.fields_by_name["time"].message_type)()
        if mode == "valid":
            ts.seconds = int(time.time()) - self.rng.randint(0, 3600)
        else:
            ts.seconds = self.rng.choice(SECONDS + (int(time.time()),))
            ts.nanos = self.rng.choice(NANOS)
        return ts

    def _alias(self, mode: str) -> Message:
        alias = decision_pb2.Alias()
        if mode == "valid":
            alias.type = self.rng.choice(ALIAS_TYPES)
            alias.value = f"{self.rng.choice(self.vocab.chaos)}-{self.rng.randrange(8)}"
        else:
            alias.type = self.rng.choice(ALIAS_TYPES + ("", "Cookie", "x" * 40, "a-b"))
            alias.value = self._string(mode, "v")
        return alias

    def _broken_catalog(self) -> str:
        text, rng = self.vocab.catalog_text, self.rng
        cut = rng.randrange(len(text))
        return rng.choice((
            text[:cut],  # truncated
            text[:cut] + "\x00" + text[cut:],
            text[:cut] + "\t:\n  - [" + text[cut:],
            "a: &a [" + ", ".join(["*a"] * 10) + "]",  # a recursive alias
            "x: " + "[" * 10_000 + "]" * 10_000,  # nesting far past the limit
            "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(2000)),
        ))

    # -- requests whose fields depend on each other (an event's type names its attributes,
    #    ledger customers' events carry keys, outcomes quote decisions) ---------------------

    def _Event(self, msg: Message, mode: str, ledger: list) -> None:
        self._fill(msg, mode, ledger, 0, {})
        if msg.WhichOneof("customer") == "customer_id" and msg.customer_id in self.vocab.ledger:
            self._ledger_event(msg, mode, ledger)

    def _ledger_event(self, msg: Message, mode: str, ledger: list) -> None:
        """A ledger customer's event always has a key (a retry reuses a recent one), so that
        answered or not, it is applied at most once, and exactly once once answered; types
        that arm timers are left to the chaos pool (a firing adds events nobody sent), and so
        are those no caller may send (a timer's), and a channel the type may not come from is
        replaced by one it may (the catalog's events.<type>.channels)."""
        v, rng = self.vocab, self.rng
        if msg.type in v.events and msg.type not in v.timerless:
            msg.type = rng.choice(v.timerless)
        if msg.channel in v.channels and msg.channel not in v.senders[msg.type]:
            msg.channel = rng.choice(v.senders[msg.type])
            msg.attributes.clear()
            for name, value in self._map_entries(
                    decision_pb2.Event.DESCRIPTOR.fields_by_name["attributes"], mode,
                    {"type": msg.type}):
                msg.attributes[name].CopyFrom(value)
        same = [k for c, k in self._recent if c == msg.customer_id]
        if same and rng.random() < 0.2:
            msg.idempotency_key = rng.choice(same)
        else:
            self._keys += 1
            msg.idempotency_key = f"lk-{self._keys}"
            self._recent = (self._recent + [(msg.customer_id, msg.idempotency_key)])[-256:]
        ledger.append((msg.customer_id, msg.idempotency_key))

    def _Outcome(self, msg: Message, mode: str, ledger: list) -> None:
        self._fill(msg, mode, ledger, 0, {})
        if mode == "valid" and self.vocab.decisions:
            decision_id, customer, channel, action = self.rng.choice(self.vocab.decisions)
            msg.decision_id, msg.customer_id, msg.channel = decision_id, customer, channel
            msg.action_id = action

    def _ForgetRequest(self, msg: Message, mode: str, ledger: list) -> None:
        self._fill(msg, mode, ledger, 0, {})
        if msg.WhichOneof("customer") == "customer_id" and msg.customer_id in self.vocab.ledger:
            msg.customer_id = self.rng.choice(self.vocab.chaos)

    def _LinkRequest(self, msg: Message, mode: str, ledger: list) -> None:
        self._fill(msg, mode, ledger, 0, {})
        if msg.customer_id in self.vocab.ledger:
            msg.customer_id = self.rng.choice(self.vocab.chaos)

    # -- bytes that are not the message -----------------------------------------------------------

    def _garbage(self, desc: d.Descriptor) -> bytes:
        rng = self.rng
        valid = self.message(desc, "valid", []).SerializeToString()
        return rng.choice((
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
            valid[:max(len(valid) - 1, 0)],  # truncated
            b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length-delimited, a 4 GiB length
            b"\x0b" * 64,  # start-group markers
            b"\x09" + b"\x00" * 3,  # a fixed64 cut short
            b"\x0a\x05" + b"\xc3\x28\xa0\xa1\xff",  # a string field holding invalid UTF-8
            b"\x12\x02\x08" * 1000,
        ))


def _is_map(f: d.FieldDescriptor) -> bool:
    return (f.type == d.FieldDescriptor.TYPE_MESSAGE
            and f.message_type.GetOptions().map_entry)
