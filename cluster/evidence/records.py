"""The decision log's records, as shards write them and as `kairos log export` and `kairos
replay` read them.

A `DecisionRecord` holds what one decision saw and did: who, where, when, which catalog and
model versions, the customer's profile as a one-customer block (storage/blocks.py, so a
candidate catalog with other slots can load it), the model inputs by name, the eligible
actions and the shown ones with the probability that the policy shows each at its slot. The
outcomes that name the decision arrive later as `OutcomeRecord`s and are joined to it on
export. Exports are JSON lines (bytes as base64) or Parquet (pyarrow).
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

FORMAT = 1  # of the records below; a reader refuses another


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
    outcome: str  # the Respond outcome's name, e.g. "ACCEPTED"
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
    control: bool = False  # held back: a uniformly random eligible action was shown
    outcomes: tuple[OutcomeRecord, ...] = field(default=())  # joined on export

    def with_outcomes(self, outcomes: Iterable[OutcomeRecord]) -> "DecisionRecord":
        return DecisionRecord(**{**vars(self), "outcomes": tuple(outcomes)})


class LogFormatError(ValueError):
    """A log file that is not a Kairos decision log of this format (says where)."""


def to_json(record: DecisionRecord) -> dict[str, Any]:
    data = asdict(record)
    data["profile"] = base64.b64encode(record.profile).decode()
    data["format"] = FORMAT
    return data


def from_json(data: dict[str, Any], where: str = "record") -> DecisionRecord:
    try:
        if data.pop("format", FORMAT) != FORMAT:
            raise LogFormatError(f"{where}: format is not {FORMAT}")
        return DecisionRecord(
            **{**data,
               "profile": base64.b64decode(data["profile"], validate=True),
               "eligible": tuple(data["eligible"]),
               "shown": tuple(ShownAction(**s) for s in data["shown"]),
               "outcomes": tuple(OutcomeRecord(**o) for o in data.get("outcomes", ()))})
    except LogFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise LogFormatError(f"{where}: not a decision record: {exc}") from None


def write_jsonl(records: Iterable[DecisionRecord], path: str | Path) -> int:
    """Write the records as JSON lines; how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(to_json(record), separators=(",", ":")) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[DecisionRecord]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LogFormatError(f"{path}:{number}: not JSON: {exc}") from None
                yield from_json(data, f"{path}:{number}")
