"""The JSON schema that editors use agrees with the catalogs Kairos accepts."""
from __future__ import annotations

import datetime
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

SCHEMA = json.loads(resources.files("kairos.core").joinpath("catalog.schema.json").read_text())
SMALL = Path(__file__).parent / "data" / "small.yaml"


def as_json(value):
    """YAML turns unquoted timestamps into datetimes; JSON has only strings."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def validator():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


@pytest.mark.parametrize("text", [
    SMALL.read_text(), resources.files("kairos.core").joinpath("catalogs/default.yaml").read_text()
], ids=["small", "default"])
def test_accepted_catalogs_validate(text):
    errors = list(validator().iter_errors(as_json(yaml.safe_load(text))))
    assert errors == []


@pytest.mark.parametrize("edit, path", [
    (lambda d: d.update(colour="blue"), []),
    (lambda d: d["features"]["orders"].update(kind="tally"), ["features", "orders", "kind"]),
    (lambda d: d["features"]["views_7d"].update(half_life="7 days"),
     ["features", "views_7d", "half_life"]),
    (lambda d: d["actions"][0].update(valeu=3), ["actions", 0]),
    (lambda d: next(iter(d["actions"][0]["channels"].values())).update(agent_text="x" * 1001),
     ["actions", 0, "channels", next(iter(yaml.safe_load(SMALL.read_text())["actions"][0][
         "channels"])), "agent_text"]),
])
def test_schema_rejects_what_the_loader_rejects(edit, path):
    doc = as_json(yaml.safe_load(SMALL.read_text()))
    edit(doc)
    errors = list(validator().iter_errors(doc))
    assert errors and list(errors[0].absolute_path) == path
