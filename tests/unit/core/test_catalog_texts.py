"""A catalog's texts after YAML's escapes are read: the version is a short label of visible
ASCII (it travels in every decision: 900 KB of it made GetProfile pass gRPC's 4 MiB), the name
at most MAX_NAME characters on one line, a string field's values at most MAX_VALUE on one line,
an action's string attributes at most MAX_ATTRIBUTE_TEXT, and no text holds control characters
(but tab and line feed in the longer ones) or bidirectional overrides. These checks came after
catalogs could be saved, so a saved catalog breaking them still loads, with the refusal kept
(`strict=False`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kairos.core.catalog import (MAX_ATTRIBUTE_TEXT, MAX_NAME, MAX_VALUE, MAX_VERSION,
                                 load_catalog)
from kairos.core.errors import CatalogError

SMALL = Path(__file__).parent / "data" / "small.yaml"


def edited(old: str, new: str) -> str:
    text = SMALL.read_text()
    assert text.count(old) == 1, old
    return text.replace(old, new)


def with_agent_text(written: str) -> str:
    """small.yaml with `written` (YAML, as in the file) as its first offer's agent_text."""
    return edited("email: {treatment: cart_email}",
                  f"email: {{treatment: cart_email, agent_text: {written}}}")


def refusal(text: str) -> str:
    """The strict load's error, which a saved catalog's (not strict) load keeps instead."""
    with pytest.raises(CatalogError) as err:
        load_catalog(text, "small.yaml")
    assert [str(r) for r in load_catalog(text, "small.yaml", strict=False).refusals][:1] == \
        [str(err.value)]
    return str(err.value)


@pytest.mark.parametrize("written", [r'"9\0\e[2J\u202e' + "x" * 900 + '"', '"2026 12 2"',
                                     '"' + "9" * (MAX_VERSION + 1) + '"', '"2026.12.\u00e9"',
                                     r'"1\t2"'])
def test_a_version_is_a_short_label_of_visible_ascii(written):
    error = refusal(edited('version: "t1"', f"version: {written}"))
    assert error.startswith(f"small.yaml:3:10: version: expected at most {MAX_VERSION} ASCII "
                            f"letters, digits and punctuation marks (no spaces), got ")
    assert len(error) < 300  # what it quotes is cut short


@pytest.mark.parametrize("version", ["2026.12.2", "v2-rc.1+build:7", "2026-12-05T10:00+01:00",
                                     "9" * MAX_VERSION, 'launch-"2026.12.2"'])
def test_versions_a_marketer_writes_are_taken(version):
    assert load_catalog(edited('version: "t1"', f"version: '{version}'"), "small.yaml"
                        ).version == version


@pytest.mark.parametrize("written, error", [
    ('"omni\\0retail"', "character #x0000 at 5"),
    ('"omni\\u202eretail"', "character #x202e (RIGHT-TO-LEFT OVERRIDE) at 5"),
    ('"omni\\e[2Jretail"', "character #x001b at 5"),
    ('"omni\\nretail"', "character #x000a at 5"),  # a label is one line
    ('"omni\\u2067retail"', "character #x2067 (RIGHT-TO-LEFT ISOLATE) at 5"),
    ('"omni\\x85retail"', "character #x0085 at 5"),
])
def test_a_name_holds_no_control_or_bidi_override_character(written, error):
    assert refusal(edited("name: small-test", f"name: {written}")) == \
        f"small.yaml:2:7: name: {error}: no control or bidirectional-override characters in " \
        f"a catalog's texts"


def test_a_name_is_at_most_max_name_characters():
    assert load_catalog(edited("name: small-test", "name: " + "n" * MAX_NAME), "small.yaml")
    assert refusal(edited("name: small-test", "name: " + "n" * (MAX_NAME + 1))) == \
        f"small.yaml:2:7: name: at most {MAX_NAME} characters, got {MAX_NAME + 1}"


@pytest.mark.parametrize("written, error", [
    ('"Offer \\u202ethe upgrade"', "#x202e (RIGHT-TO-LEFT OVERRIDE) at 7"),
    ('"Offer \\e[31mthe upgrade"', "#x001b at 7"),
    ('"Offer the upgrade\\r"', "#x000d at 18"),
])
def test_an_agent_text_holds_no_control_or_bidi_override_character(written, error):
    message = refusal(with_agent_text(written))
    assert f": character {error}: no control or bidirectional-override characters" in message
    assert ".agent_text (action '" in message


def test_an_agent_text_may_have_lines_tabs_and_right_to_left_words():
    written = '"Offer the upgrade.\\n\\tSay: \\u05e9\\u05dc\\u05d5\\u05dd\\u200f"'
    catalog = load_catalog(with_agent_text(written), "small.yaml")
    texts = [o.agent_text for a in catalog.actions for o in a.offers if o.agent_text]
    assert texts == ["Offer the upgrade.\n\tSay: \u05e9\u05dc\u05d5\u05dd\u200f"]


@pytest.mark.parametrize("old, where", [
    ("device: {type: string, values: [desktop, mobile]}", "context.device.values[2]"),
    ("status: {type: string, values: [shipped, delayed, lost, delivered]}",
     "events.delivery_update.fields.status.values[4]"),
    ("tier: {type: string, values: [none, silver, gold], default", "attributes.tier.values[3]"),
])
@pytest.mark.parametrize("written, error", [
    ('"ta\\e[2Jblet"', "#x001b at 3"),
    ('"ta\\u202eblet"', "#x202e (RIGHT-TO-LEFT OVERRIDE) at 3"),
    ('"ta\\tblet"', "#x0009 at 3"),  # a value is one line
])
def test_a_field_value_holds_no_control_or_bidi_override_character(old, where, written, error):
    assert refusal(edited(old, old.replace("]", f", {written}]"))).endswith(
        f" {where}: character {error}: no control or bidirectional-override characters in a "
        f"catalog's texts")


def test_a_field_value_is_at_most_max_value_characters():
    old = "device: {type: string, values: [desktop, mobile]}"
    assert load_catalog(edited(old, old.replace("]", f", {'t' * MAX_VALUE}]")), "small.yaml")
    assert refusal(edited(old, old.replace("]", f", {'t' * (MAX_VALUE + 1)}]"))).endswith(
        f" context.device.values[2]: at most {MAX_VALUE} characters, got {MAX_VALUE + 1}")


@pytest.mark.parametrize("note, error", [
    ('"a\\e[2Jb"', "character #x001b at 2: no control or bidirectional-override characters"),
    ('"a\\u202eb"', "character #x202e (RIGHT-TO-LEFT OVERRIDE) at 2: no control"),
    ('"' + "n" * (MAX_ATTRIBUTE_TEXT + 1) + '"',
     f"at most {MAX_ATTRIBUTE_TEXT} characters, got {MAX_ATTRIBUTE_TEXT + 1}"),
])
def test_a_string_attribute_of_an_action_is_checked_as_a_text(note, error):
    message = refusal(edited("attributes: {margin: 0.4}",
                             f"attributes: {{margin: 0.4, note: {note}}}"))
    assert ".attributes.note (action '" in message and f": {error}" in message


def test_a_string_attribute_may_have_lines_and_tabs():
    tail = "n" * (MAX_ATTRIBUTE_TEXT - 21)
    catalog = load_catalog(edited("attributes: {margin: 0.4}", f'attributes: {{margin: 0.4, '
                                  f'note: "Line one.\\n\\tLine two: {tail}"}}'), "small.yaml")
    assert [a.attributes["note"] for a in catalog.actions if "note" in a.attributes] == \
        [f"Line one.\n\tLine two: {tail}"]


def test_a_refused_catalog_is_logged_as_running_only_when_it_runs(caplog):
    # a strict compile refuses it and logs nothing; one taken as saved says so once, the
    # version written as a literal (it may hold the very characters the checks refuse)
    from kairos.core.compiler import compiled_from_text
    text = edited('version: "t1"', 'version: "t1 \\e[2J\\u202e"')
    with pytest.raises(CatalogError):
        compiled_from_text(text, "small.yaml", strict=True)
    compiled_from_text(text, "small.yaml", quiet=True)  # a check, as the controller's
    assert "runs, though" not in caplog.text
    compiled_from_text(text, "small.yaml")
    compiled_from_text(text, "small.yaml")
    said = [r.getMessage() for r in caplog.records if "runs, though" in r.getMessage()]
    assert len(said) == 1 and "\x1b" not in said[0] and "\\x1b" in said[0]


@pytest.mark.parametrize("default, error", [
    ('"' + "x" * (MAX_VALUE + 1) + '"', f"at most {MAX_VALUE} characters"),
    (r'"two\nlines"', "character #x000a")], ids=["long", "lines"])
def test_a_string_default_is_bounded_as_a_value(default, error):
    # a default, as a rule's literal, stands for a request's string: no longer, one line
    assert error in refusal(edited("  member_since: {type: timestamp}",
                                   f"  member_since: {{type: timestamp}}\n"
                                   f"  note: {{type: string, default: {default}}}"))
