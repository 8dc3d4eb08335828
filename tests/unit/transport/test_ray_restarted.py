"""`restarted()` asks Ray without printing Ray's own deprecation warning on every actor's start."""
import warnings

import pytest
import ray
from ray.util.annotations import Deprecated

from kairos.cluster.transport import ray_backend

pytestmark = pytest.mark.unit


class _Context:
    """Ray 2.60's runtime context as `restarted` meets it: the property reads actor_id, which
    Ray's own decorator deprecates (its warning's text starts with Ray's boilerplate), and
    answers."""

    def __init__(self, answer: bool):
        self.answer = answer

    @property
    @Deprecated(message="Use get_actor_id() instead", warning=True)
    def actor_id(self) -> str:
        return "a1"

    @property
    def was_current_actor_reconstructed(self) -> bool:
        assert self.actor_id
        return self.answer


@pytest.mark.parametrize("answer", [True, False])
def test_restarted_answers_without_ray_s_deprecation_warning(monkeypatch, answer):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context(answer))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert ray_backend.restarted() is answer
    assert [str(w.message) for w in shown] == []


def test_a_warning_of_another_kind_still_shows(monkeypatch):
    """Only deprecation warnings are Ray's to silence here."""
    class Warns(_Context):
        @property
        def was_current_actor_reconstructed(self) -> bool:
            warnings.warn("the GCS is slow", RuntimeWarning, stacklevel=2)
            return True

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Warns(True))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert ray_backend.restarted() is True
    assert [str(w.message) for w in shown] == ["the GCS is slow"]
