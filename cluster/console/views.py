"""What the pages show, from the gateway's answers: plain values for the templates.

Nothing here escapes: Jinja's autoescape does, at the one place a value becomes HTML. Times
leave as UTC ISO-8601 and a `<time>` element; the page's script shows them in the agent's
own time zone (the browser's, through Intl), so the server never guesses a zone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from kairos.v1 import admin_pb2
from kairos.v1 import decision_pb2 as pb

ACTIONS_SHOWN = 3  # the most next best actions an agent's screen lists
MAX_DROPPED_SHOWN = 100  # a catalog of thousands of actions drops most of them every time


@dataclass(frozen=True)
class Shown:
    """One value: `text` to print, or `when` (UTC ISO-8601) for a time."""

    text: str = ""
    when: str = ""


def shown(value: pb.Value) -> Shown:
    kind = value.WhichOneof("kind")
    if kind == "timestamp_value":
        return Shown(when=iso(value.timestamp_value))
    if kind == "number_value":
        return Shown(text=f"{value.number_value:.6g}")
    if kind == "bool_value":
        return Shown(text="true" if value.bool_value else "false")
    return Shown(text=str(getattr(value, kind)) if kind else "")


def iso(stamp: Timestamp) -> str:
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, timezone.utc) \
        .isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class CustomerPage:
    """The customer page's live part: the golden record, the agent channel's decision and
    the best action on the other channels."""

    customer_id: str
    channel: str
    attributes: list[tuple[str, Shown]]
    features: list[tuple[str, Shown]]
    model_inputs: list[tuple[str, Shown]]  # what the models read, from either of the above
    consent: list[tuple[str, bool]]
    history: list[dict]
    decision: pb.Decision
    actions: list[pb.RankedAction]
    others: list[tuple[str, pb.RankedAction | None, bool]]  # channel, best, fallback
    dropped: list[pb.DroppedAction] = field(default_factory=list)
    dropped_more: int = 0
    unread: bool = False  # the record could not be read: the decision alone is shown

    @property
    def channels(self) -> list[str]:
        return [self.channel] + [name for name, _, _ in self.others]

    @property
    def live_source(self) -> str:
        """The live part's stream, which watches the channels shown from its start."""
        return "/customer/live?" + urlencode({"id": self.customer_id, "channel": self.channels},
                                             doseq=True)


def customer_page(profile: pb.Profile, channel: str) -> CustomerPage:
    """The page of `channel`'s agents (the profile holds a decision for it)."""
    decision = profile.current[channel]
    dropped = list(decision.explanation.dropped)
    return CustomerPage(
        customer_id=profile.customer_id, channel=channel,
        attributes=[(name, shown(v)) for name, v in sorted(profile.attributes.items())],
        features=[(name, shown(v)) for name, v in sorted(profile.features.items())],
        model_inputs=[(name, shown(profile.features[name] if name in profile.features
                                   else profile.attributes[name]))
                      for name in profile.model_inputs
                      if name in profile.features or name in profile.attributes],
        consent=sorted(profile.consent.items()),
        history=[{"when": iso(h.time), "channel": h.channel, "action_id": h.action_id,
                  "outcome": h.outcome} for h in profile.history],
        decision=decision, actions=list(decision.actions[:ACTIONS_SHOWN]),
        others=[(name, d.actions[0] if d.actions else None, d.fallback)
                for name, d in sorted(profile.current.items()) if name != channel],
        dropped=dropped[:MAX_DROPPED_SHOWN],
        dropped_more=max(0, len(dropped) - MAX_DROPPED_SHOWN))


def fallback_page(customer_id: str, channel: str, decision: pb.Decision) -> CustomerPage:
    """The page when only a decision could be had (the record could not be read): the
    decision, and nothing of the record."""
    return CustomerPage(customer_id=customer_id, channel=channel, attributes=[], features=[],
                        model_inputs=[], consent=[], history=[], decision=decision,
                        actions=list(decision.actions[:ACTIONS_SHOWN]), others=[],
                        unread=True)


def draining(status: admin_pb2.ClusterStatus) -> list[str]:
    return [n.node_id for n in status.node_status if n.draining]
