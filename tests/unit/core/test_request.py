"""What a request names, checked once for every role, and the catalog's fallback decision."""
from __future__ import annotations

import re

import pytest

from kairos.core.decision import RankedAction
from kairos.core.errors import InputError
from kairos.core.request import (MAX_CUSTOMER_ID_LENGTH, PlacementCodes, channel_code,
                                 check_bounded, check_customer, fallback_decision,
                                 placement_codes)


def test_a_customer_id_is_a_bounded_non_empty_string():
    assert check_customer("c-1") == "c-1"
    assert check_customer("c" * MAX_CUSTOMER_ID_LENGTH) == "c" * MAX_CUSTOMER_ID_LENGTH


@pytest.mark.parametrize("customer_id, reason", [
    ("", "expected a non-empty string, got str ''"),
    (None, "expected a non-empty string, got NoneType None"),
    (7, "expected a non-empty string, got int 7"),
    ("c" * 257, "at most 256 characters, got 257"),
])
def test_bad_customer_ids(customer_id, reason):
    with pytest.raises(InputError) as exc:
        check_customer(customer_id)
    assert (exc.value.field, exc.value.reason) == ("customer_id", reason)


def test_the_field_can_be_named_by_the_caller():
    with pytest.raises(InputError) as exc:
        check_customer("", "events[2].customer_id")
    assert exc.value.field == "events[2].customer_id"


def test_channel_codes_name_the_field_too(small):
    assert channel_code(small, "web") == small.channel_index["web"]
    with pytest.raises(InputError) as exc:
        channel_code(small, "sms", "events[2].channel")
    assert str(exc.value) == "events[2].channel: unknown channel 'sms' (channels: web, email)"


@pytest.mark.parametrize("placement, expected", [
    (None, "hero"), ("", "hero"), ("hero", "hero"), ("sidebar", "sidebar"),
])
def test_an_empty_placement_is_the_channel_first(small, placement, expected):
    codes = placement_codes(small, "web", placement)
    assert codes == PlacementCodes(0, small.placement_index[0][expected])
    assert small.placement_names[codes.channel][codes.placement] == expected


@pytest.mark.parametrize("channel, placement, message", [
    ("sms", "", "channel: unknown channel 'sms' (channels: web, email)"),
    ("web", "weekly", "placement: unknown placement 'weekly' of web (placements: hero, "
                      "sidebar)"),
])
def test_unknown_names_list_the_valid_ones(small, channel, placement, message):
    with pytest.raises(InputError) as exc:
        placement_codes(small, channel, placement)
    assert str(exc.value) == message


def test_fallback_decision(small):
    d = fallback_decision(small, "c", "web")
    assert re.fullmatch(r"fallback-[0-9a-f]{16}", d.decision_id)
    assert (d.customer_id, d.channel, d.placement) == ("c", "web", "hero")
    assert d.fallback and d.model_version == 0 and d.catalog_version == "t1"
    assert d.explanation is None
    assert d.actions == (RankedAction("track_order", "serve", "track_widget", 0.0, 0.0, 0.0, 1.0,
                                      1.0, 0.0),)
    assert fallback_decision(small, "c", "web").decision_id != d.decision_id


def test_a_channel_may_fall_back_to_nothing(small):
    d = fallback_decision(small, "", "email", "weekly")
    assert d.actions == () and d.placement == "weekly" and d.fallback


def test_fallback_checks_the_names(small):
    with pytest.raises(InputError, match="unknown placement 'footer' of web"):
        fallback_decision(small, "c", "web", "footer")


def test_bounded_strings_name_the_field_and_the_limit():
    assert check_bounded("", "idempotency_key", 4) == ""
    assert check_bounded("abcd", "idempotency_key", 4) == "abcd"
    with pytest.raises(InputError) as exc:
        check_bounded("abcde", "events[3].idempotency_key", 4)
    assert (exc.value.field, exc.value.reason) == ("events[3].idempotency_key",
                                                   "at most 4 characters, got 5")
