"""Replay loads each logged profile as a shard loads a block of another catalog: a candidate's
slot that the log's profiles hold no value of its meaning for (a new one, or one whose type or
definition changed) starts from its default. The record names it and the evaluation warns of
it (review of cluster/evidence/, finding 5: a segment made a number read 0 in every decision,
and the candidate's offer to a segment showed a share of 0.000 with no warning)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pytest
import yaml

from bench import truth
from kairos.cluster.evidence import evaluation, report
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.cluster.storage.blocks import pack, unpack
from kairos.core.catalog import load_catalog

WARNING = ("{slot}: the log's profiles hold no value of this meaning (the logging catalog lacks "
           "the slot, or its type or definition changed); {n} of the {n} evaluated decisions "
           "saw its default")


@pytest.fixture(scope="module")
def log():
    return truth.log(4, truth.customers(np.random.default_rng(4), 40), learn=False)


def candidate(edit: Callable[[dict], None]):
    doc = yaml.safe_load(truth.logging_catalog())
    edit(doc)
    return for_replay(load_catalog(yaml.safe_dump(doc), "candidate"))


def segment_a_number(doc: dict) -> None:
    """The review's case: segment, a string of the log's profiles, a number read from score."""
    doc["attributes"]["segment"] = {"type": "float", "default": 0,
                                    "from": {"event": "profile", "field": "score"}}
    doc["models"]["predictors"] = [p for p in doc["models"]["predictors"]
                                   if p["name"] != "segment"]
    doc["actions"][0]["eligibility"] = "segment > 0"


def a_new_attribute_and_feature(doc: dict) -> None:
    doc["attributes"]["tier"] = {"type": "float", "default": 0,
                                 "from": {"event": "profile", "field": "score"}}
    doc["features"] = {"profiles": {"kind": "count", "event": "profile"}}


def profiles_counted(half_life: str) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc["features"] = {"profiles": {"kind": "decayed_count", "event": "profile",
                                        "half_life": half_life}}
    return edit


def evidence_of(records, compiled) -> tuple[list, dict]:
    replayed = list(replay(records, compiled, 8))
    return replayed, evaluation.evaluate(replayed)


def test_a_slot_whose_type_changed_is_named_and_warned_of(log):
    replayed, evidence = evidence_of(log, candidate(segment_a_number))
    assert {r.defaults for r in replayed} == {("attribute segment",)}
    n = evidence["evaluated"]
    assert WARNING.format(slot="attribute segment", n=n) in evidence["warnings"]
    assert WARNING.format(slot="attribute segment", n=n) in report.summary(
        {**evidence, "candidate": {"name": "candidate", "version": "1"}})


def test_new_slots_are_warned_of_each(log):
    _, evidence = evidence_of(log, candidate(a_new_attribute_and_feature))
    n = evidence["evaluated"]
    assert [w for w in evidence["warnings"] if "hold no value" in w] == [
        WARNING.format(slot="attribute tier", n=n), WARNING.format(slot="feature profiles", n=n)]


def test_a_feature_whose_half_life_changed_is_warned_of():
    """A log written by a catalog with a decayed count, a candidate with it at another
    half-life: its count means another thing, and starts over."""
    doc = yaml.safe_load(truth.logging_catalog())
    profiles_counted("7d")(doc)
    counted = truth.log(4, truth.customers(np.random.default_rng(4), 20), learn=False,
                        catalog_text=yaml.safe_dump(doc))
    replayed, same = evidence_of(counted, candidate(profiles_counted("7d")))
    assert all(r.defaults == () for r in replayed)
    assert not any("hold no value" in w for w in same["warnings"])
    _, changed = evidence_of(counted, candidate(profiles_counted("14d")))
    assert WARNING.format(slot="feature profiles", n=changed["evaluated"]) in \
        changed["warnings"]


@pytest.mark.parametrize("edit", [
    lambda doc: None,
    # a string's declared values, and where an attribute is set from, are no part of its
    # meaning: the log's values carry over
    lambda doc: doc["attributes"]["segment"].update(values=["a", "b", "c", "d"]),
    lambda doc: doc["attributes"]["segment"].update(default="c")])
def test_slots_that_keep_their_meaning_are_not_warned_of(log, edit):
    replayed, evidence = evidence_of(log, candidate(edit))
    assert all(r.defaults == () for r in replayed)
    assert not any("hold no value" in w for w in evidence["warnings"])


def test_a_profile_written_before_blocks_named_meanings_is_matched_by_name_and_kind(log):
    """Such a block carries a slot of the same name that is a string or not as the candidate's
    is: a segment become a number is still read at its default, and warned of."""
    unnamed = [dataclasses.replace(r, profile=pack({
        k: v for k, v in unpack(r.profile).items() if k != "meanings"})) for r in log]
    replayed, evidence = evidence_of(unnamed, candidate(segment_a_number))
    assert {r.defaults for r in replayed} == {("attribute segment",)}
    assert WARNING.format(slot="attribute segment", n=evidence["evaluated"]) \
        in evidence["warnings"]
    assert all(r.defaults == () for r in replay(unnamed, candidate(lambda doc: None), 8))


def test_a_blocks_string_flags_are_read_by_their_truth_as_import_block_reads_them(log):
    """A hand-edited block's flags may be maps, which import_block takes by their truth; the
    layout's key held the maps themselves, which no key can (a TypeError: a traceback from
    `kairos replay`)."""
    block = unpack(log[0].profile)
    edited = dataclasses.replace(log[0], profile=pack(
        {**block, "string_columns": [{"x": 1} if flag else {} for flag in
                                     block["string_columns"]]}))
    [replayed] = replay([edited], candidate(lambda doc: None), 2)
    assert replayed.decision_id == log[0].decision_id and replayed.defaults == ()
