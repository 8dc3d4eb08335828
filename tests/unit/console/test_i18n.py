"""The console's languages: chosen from Accept-Language, every label in both."""
from __future__ import annotations

import pytest

from kairos.cluster.console import i18n
from kairos.core.compiler import Outcome, Reason
from kairos.v1 import decision_pb2 as pb

# what the console shows: the engine names a dropped action's reason by Reason (a winner's,
# SELECTED, is never among the dropped) and a history entry's outcome by Outcome, lower-cased
DROPPED_REASONS = [r.name for r in Reason if r is not Reason.SELECTED]
OUTCOMES = sorted({o.name.lower() for o in Outcome}
                  | {name.lower() for name in pb.OutcomeKind.keys()
                     if name != "OUTCOME_KIND_UNSPECIFIED"})


@pytest.mark.parametrize("header, lang", [
    (None, "en"), ("", "en"), ("ja", "ja"), ("ja-JP,ja;q=0.9,en;q=0.8", "ja"),
    ("en-US,en;q=0.9,ja;q=0.8", "en"), ("fr-FR,ja;q=0.5", "ja"), ("fr, de", "en"),
    ("en;q=0.2, ja;q=0.7", "ja"), ("ja;q=bogus, en", "en"), ("ja," * 600, "en"),
])
def test_the_browsers_preferred_language(header, lang):
    assert i18n.language(header) == lang


def test_both_languages_have_every_label_and_japanese_is_japanese():
    assert set(i18n.LABELS["en"]) == set(i18n.LABELS["ja"])
    assert i18n.labels("ja")["next_best"] == "ネクスト・ベスト・アクション"
    assert i18n.labels("xx") is i18n.LABELS["en"]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("kind, code", [("reason", code) for code in DROPPED_REASONS]
                         + [("outcome", code) for code in OUTCOMES])
def test_every_reason_and_outcome_has_a_label(lang, kind, code):
    assert i18n.term(i18n.labels(lang), kind, code) != code


def test_a_code_without_a_label_is_shown_as_it_is():
    assert i18n.term(i18n.labels("ja"), "reason", "FROM_A_NEWER_SHARD") == "FROM_A_NEWER_SHARD"
    assert i18n.term(i18n.labels("ja"), "reason", "TOP_K") == "表示枠より下位"
