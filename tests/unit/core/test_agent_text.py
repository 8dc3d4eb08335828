"""An offer's agent_text: optional, a non-empty string of at most MAX_AGENT_TEXT characters,
compiled by (action id, channel)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kairos.core.catalog import MAX_AGENT_TEXT, load_catalog
from kairos.core.compiler import compile_catalog, default_compiled
from kairos.core.errors import CatalogError

SMALL = Path(__file__).parent / "data" / "small.yaml"


def with_agent_text(text) -> str:
    doc = yaml.safe_load(SMALL.read_text())
    offer = next(iter(doc["actions"][0]["channels"].values()))
    offer["agent_text"] = text
    return yaml.safe_dump(doc)


def test_the_default_catalog_gives_the_call_centres_offers_their_words():
    texts = default_compiled().agent_texts
    assert texts["extended_warranty", "call_center"].startswith("Offer the extended warranty")
    assert ("extended_warranty", "web") not in texts  # optional: the web shows a banner


def test_an_agent_text_is_compiled_by_action_and_channel():
    doc = yaml.safe_load(with_agent_text("Say hello"))
    action = doc["actions"][0]
    channel = next(name for name, offer in action["channels"].items() if "agent_text" in offer)
    compiled = compile_catalog(load_catalog(yaml.safe_dump(doc), "small.yaml"))
    assert compiled.agent_texts == {(action["id"], channel): "Say hello"}


@pytest.mark.parametrize("text, error", [
    ("x" * (MAX_AGENT_TEXT + 1), f"at most {MAX_AGENT_TEXT} characters"),
    ("  ", "expected a non-empty string"), (42, "expected a non-empty string"),
])
def test_an_agent_text_is_bounded(text, error):
    with pytest.raises(CatalogError, match=error) as caught:
        load_catalog(with_agent_text(text), "small.yaml")
    assert "agent_text" in str(caught.value)
