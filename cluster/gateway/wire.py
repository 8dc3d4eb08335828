"""The gRPC contract's messages to and from the runtime's Python values."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from kairos.core.decision import Decision, RankedAction
from kairos.core.errors import InputError
from kairos.core.request import MAX_STRING_LENGTH, check_bounded
from kairos.v1 import decision_pb2 as pb


def value_in(where: str, value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InputError(where, "the value has no kind set (string, number, int, bool or "
                                "timestamp)")
    if kind == "timestamp_value":
        return time_in(where, value.timestamp_value)
    if kind == "string_value":  # the shard's bound, before the request travels
        return check_bounded(value.string_value, where, MAX_STRING_LENGTH)
    return getattr(value, kind)


_PLAIN = frozenset({"number_value", "int_value", "bool_value"})  # taken as they are


def values_in(where: str, values: Mapping[str, pb.Value]) -> dict[str, Any]:
    """`value_in` of each; a value's field name (`where.name`) is made only for one that
    fails its check or needs converting: making it for every value cost a Decide's context
    about 1 µs a value, a fifth of the gateway's checks of the request."""
    out = {}
    for name in values:  # a protobuf map's items() is the Mapping mixin's, in Python
        v = values[name]
        kind = v.WhichOneof("kind")
        if kind in _PLAIN:
            out[name] = getattr(v, kind)
        elif kind == "string_value" and len(text := v.string_value) <= MAX_STRING_LENGTH:
            out[name] = text
        else:
            out[name] = value_in(f"{where}.{name}", v)
    return out


def time_in(where: str, stamp: Timestamp) -> float:
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise InputError(where, f"nanos must be in 0..999999999, got {stamp.nanos}")
    return stamp.seconds + stamp.nanos / 1e9


def optional_time_in(where: str, message: Any, field: str) -> float | None:
    return time_in(where, getattr(message, field)) if message.HasField(field) else None


def time_out(seconds: float) -> Timestamp:
    stamp = Timestamp()
    whole = math.floor(seconds)
    stamp.seconds, stamp.nanos = int(whole), int(round((seconds - whole) * 1e9)) % 1_000_000_000
    return stamp


def value_out(value: Any, vtype: str = "") -> pb.Value:
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if vtype == "timestamp":
        return pb.Value(timestamp_value=time_out(value))
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(number_value=value)
    return pb.Value(string_value=str(value))


# A catalog's agent texts by (action id, channel) (CompiledCatalog.agent_texts): decisions
# travel from shards without them, and the gateway adds them from the catalog it holds.
AgentTexts = Mapping[tuple[str, str], str]


def ranked_into(out: Any, actions: Iterable[RankedAction], channel: str = "",
                texts: AgentTexts | None = None) -> None:
    """Each action added to `out`, a repeated RankedAction field, in place (built apart, as a
    message's constructor takes them, each is copied in: 0.5 µs an action of a Decide)."""
    texts = texts or {}
    for a in actions:
        out.add(action_id=a.action_id, group=a.group, treatment=a.treatment,
                priority=a.priority, propensity=a.propensity, value=a.value,
                context_weight=a.weight, lever=a.lever, selection_probability=a.selection,
                agent_text=texts.get((a.action_id, channel), ""))


def decision_out(d: Decision, texts: AgentTexts | None = None) -> pb.Decision:
    out = pb.Decision()
    decision_into(out, d, texts)
    return out


def decision_into(out: pb.Decision, d: Decision, texts: AgentTexts | None = None) -> None:
    """`d` written into `out`, an empty Decision (a field of another message: an ack's), in
    place: one built apart and copied in cost an IngestBatch 2 us an event more (issue 17)."""
    out.decision_id, out.customer_id, out.channel = d.decision_id, d.customer_id, d.channel
    out.placement, out.catalog_version = d.placement, d.catalog_version
    out.model_version, out.fallback, out.control = d.model_version, d.fallback, d.control
    ranked_into(out.actions, d.actions, d.channel, texts)
    if d.explanation is not None:
        out.explanation.SetInParent()  # set even were it empty, as a copy of one would be
        ranked_into(out.explanation.winners, d.explanation.winners, d.channel, texts)
        for x in d.explanation.dropped:
            out.explanation.dropped.add(action_id=x.action_id, reason=x.reason, detail=x.detail)


def profile_out(profile: dict[str, Any], types: Mapping[str, str],
                current: Mapping[str, Decision], texts: AgentTexts | None = None,
                consent: Mapping[str, bool] | None = None) -> pb.Profile:
    out = pb.Profile(customer_id=profile["customer_id"],
                     events_applied=profile["events_applied"], consent=consent or {},
                     model_inputs=profile["model_inputs"])
    for section in ("attributes", "features"):
        target = getattr(out, section)
        for name, value in profile[section].items():
            if value is not None:
                target[name].CopyFrom(value_out(value, types.get(name, "")))
    for h in profile["history"]:
        out.history.append(pb.Interaction(action_id=h["action_id"], channel=h["channel"],
                                          outcome=h["outcome"], time=time_out(h["time"])))
    for name, due in profile["timers"].items():
        out.timers[name].CopyFrom(time_out(due))
    for channel, decision in current.items():
        out.current[channel].CopyFrom(decision_out(decision, texts))
    return out
