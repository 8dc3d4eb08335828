"""Synthetic customers and events drawn from a catalog's declarations (shared by the benches)."""
from __future__ import annotations

import copy
import random
from typing import Any

from kairos.core.catalog import Catalog, FieldSpec, load_catalog
from kairos.core.catalog import default_catalog_text

import yaml

T0 = 1_795_000_000.0  # 2026-11-18: inside the default catalog's campaign windows


def random_value(spec: FieldSpec, rng: random.Random, now: float) -> Any:
    if spec.values:
        return rng.choice(spec.values)
    if spec.type == "vector":
        return [rng.gauss(0.0, 1.0) for _ in range(spec.size)]
    return {
        "string": lambda: f"id{rng.randrange(10_000)}",
        "int": lambda: rng.randrange(0, 100),
        "float": lambda: round(rng.lognormvariate(3.5, 1.0), 2),
        "bool": lambda: rng.random() < 0.5,
        "timestamp": lambda: now - rng.uniform(0, 30 * 86400),
    }[spec.type]()


def random_event(catalog: Catalog, rng: random.Random, now: float) -> tuple[str, dict]:
    """An event type and attributes, every required field set and half the optional ones."""
    event = rng.choice(catalog.events)
    attributes = {f.name: random_value(f, rng, now) for f in event.fields
                  if f.required or rng.random() < 0.5}
    return event.name, attributes


def random_context(catalog: Catalog, rng: random.Random, now: float) -> dict:
    return {c.name: random_value(c, rng, now) for c in catalog.context if rng.random() < 0.7}


# libyaml's, where PyYAML has it (its wheels do): the pure-Python reader and writer took seconds
# of a quick bench run, and of tests, on catalogs of thousands of actions
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_doc(text: str) -> Any:
    """`text` read as yaml.safe_load reads it."""
    return yaml.load(text, Loader=_LOADER)


def yaml_text(doc: Any, sort_keys: bool = False) -> str:
    """`doc` written as yaml.safe_dump writes it (keys in their order unless `sort_keys`)."""
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=sort_keys)


def senders_within(doc: Any) -> None:
    """A catalog document cut to some of its channels: its event types' senders
    (`events.<type>.channels`) name only those left (a type none of them may send keeps an
    empty list: no channel sends it)."""
    for event in doc["events"].values():
        if event.get("channels") is not None:
            event["channels"] = [c for c in event["channels"] if c in doc["channels"]]


def catalog_with_actions(n_actions: int, text: str | None = None) -> Catalog:
    """The default catalog with its actions repeated (ids suffixed) or cut to `n_actions`."""
    doc = yaml_doc(text or default_catalog_text())
    base = doc["actions"]
    actions = []
    for i in range(n_actions):
        action = copy.deepcopy(base[i % len(base)])
        if i >= len(base):
            action["id"] = f"{action['id']}_{i // len(base)}"
        actions.append(action)
    doc["actions"] = actions
    kept = {a["id"] for a in actions}
    doc["fallbacks"] = {ch: [a for a in ids if a in kept] for ch, ids in doc["fallbacks"].items()}
    return load_catalog(yaml_text(doc), f"default.yaml x{n_actions}")
