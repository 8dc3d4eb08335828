"""The console's languages: chosen from Accept-Language, every label in both."""
from __future__ import annotations

import pytest

from kairos.cluster.console import i18n


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
