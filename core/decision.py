"""What a decision is: the value types the engine answers with and the cluster sends on.

They are frozen: a decision is a record of what was decided, shared by the push path, the
decision log and the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class RankedAction:
    """One action a decision shows, with the factors of its priority.

    priority = propensity x weight x value x lever; a fallback action has priority, propensity
    and value 0 and weight 1, since nothing was scored.
    """

    action_id: str
    group: str  # the action's group (sell, serve, retain, ...)
    treatment: str  # how the action is shown on the decision's channel
    priority: float
    propensity: float  # the model's response probability (as exploration drew or bounded it)
    value: float  # the action's value for this customer (its value rule, or a constant)
    weight: float  # the context weight of the action's group on this channel and context
    lever: float  # the business lever the catalog sets on the action
    # the probability that the policy shows this action at this slot (the decision's draws
    # and selection_samples re-runs of them; exact 1 when nothing was drawn); 0 for a
    # fallback, which nothing scored
    selection: float = 1.0


@dataclass(frozen=True)
class Dropped:
    """An action that was not shown, and why."""

    action_id: str
    reason: str  # a compiler.Reason name, e.g. "ELIGIBILITY"
    detail: str  # the rule, policy or threshold that dropped it


@dataclass(frozen=True)
class Explanation:
    """Why a decision came out as it did: every action of the catalog is in one of the two."""

    winners: tuple[RankedAction, ...]
    dropped: tuple[Dropped, ...]


@dataclass(frozen=True)
class Decision:
    """The ranked actions for one customer on one channel and placement.

    `decision_id` is what outcomes name to credit the inputs this decision saw; the catalog
    and model versions say which catalog and which published models decided (never a mix).
    A fallback decision is the catalog's fixed list for the channel, given when the customer
    could not be decided in time; it is marked so, and its model version is 0.
    """

    decision_id: str
    customer_id: str
    channel: str
    placement: str
    actions: tuple[RankedAction, ...]  # best first; at most the placement's top_k
    catalog_version: str
    model_version: int
    fallback: bool = False
    explanation: Explanation | None = None  # only when the request asked for it
    # held back as the channel's control group: one eligible action drawn uniformly, shown
    # instead of the models' choice, or none when none is eligible (its selection probability
    # is the mixture's, as for all)
    control: bool = False
    # for a decision that shows nothing, the probability that the policy shows nothing (as
    # `RankedAction.selection` is estimated, control's share included), which off-policy
    # evaluation weighs it by; None for one that shows something, and for a fallback
    nothing_selection: float | None = None


class Learned(str, Enum):
    """What an outcome taught the models from. Only DECISION learns from what the decision
    saw; the PROFILE_ kinds learn from the customer's profile as it is now, without the
    decision's context, and are counted so (a metric, and the ack of Respond)."""

    DECISION = "decision"  # the inputs the decision saw, kept in the engine's memo
    PROFILE_NO_DECISION = "profile_no_decision"  # offline feedback: no decision named
    PROFILE_DECISION_FORGOTTEN = "profile_decision_forgotten"  # no longer in the memo
    NOTHING = "nothing"  # an impression: history only
    REFUSED = "refused"  # history only: the update would have left the model not finite
    # history only: the decision's action learned this label from an earlier outcome (an
    # accept then a convert is one example), and a conversion's value only once
    REPEATED = "repeated"
    # nothing recorded: the customer had an outcome under the same idempotency key (cluster/)
    DUPLICATE = "duplicate"
