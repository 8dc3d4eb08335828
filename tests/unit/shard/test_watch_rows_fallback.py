"""A shard watches the learner with the rows arguments (takes_rows, based_on); a learner of an
older release takes none, and the call's TypeError has its watches go without them for a while.
A TypeError raised in the learner (a bug there: Ray re-raises it as a RayTaskError, a subclass
of TypeError) is not that: it had every later version sent whole, 48.5 MiB each at the bound,
to an idle shard for good (review rev44 d-modelsync2 1)."""
from __future__ import annotations

import asyncio

from kairos.cluster.shard.modelsync import ModelSync


class RemoteTypeError(TypeError):
    """As ray.exceptions.RayTaskError(TypeError) is: raised in the actor, re-raised here."""


class Learner:
    def __init__(self, raises: type[Exception] | None):
        self.raises, self.calls = raises, []

    async def watch(self, catalog_version: str, known: int, **rows):
        self.calls.append(rows)
        if rows and self.raises is not None:
            raise self.raises("watch() takes 4 positional arguments but 6 were given")
        return None


def watched(sync: ModelSync, learner: Learner) -> None:
    asyncio.run(sync._watched(lambda: None, learner, "v1", 3, None))


def test_a_type_error_raised_in_the_learner_keeps_the_rows_arguments():
    sync, learner = ModelSync("s"), Learner(RemoteTypeError)
    watched(sync, learner)
    watched(sync, learner)
    assert [bool(rows) for rows in learner.calls] == [True, True]


def test_an_older_learners_signature_has_watches_go_without_them_for_a_while():
    sync, learner = ModelSync("s"), Learner(TypeError)
    watched(sync, learner)
    watched(sync, learner)
    assert [bool(rows) for rows in learner.calls] == [True, False]
    learner.raises = None  # upgraded meanwhile
    watched(sync, learner)  # within ROWS_AGAIN_S: without
    sync._rows_again_at = 0.0  # ROWS_AGAIN_S later
    watched(sync, learner)
    assert [bool(rows) for rows in learner.calls] == [True, False, False, True]
