"""PutCatalog and RollbackCatalog as operators and gateways retry them (catalogs.py), without
Ray: a resend changes nothing, rollbacks read the catalogs under the lock, a rollback or a put
that names the version it expects switches at most once, a shard that does not answer is
caught up rather than holding every switch, a version names one text, and no catalog compiles
on an event loop (the controller's, at a switch or a resume, the learner's, a shard's data
path)."""
from __future__ import annotations

import asyncio
import re
import threading
from types import SimpleNamespace

import pytest

from kairos.core import compiler
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled
from kairos.core.errors import CatalogError

from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner, LearnerActor
from kairos.cluster.shard.actor import ShardActor

from tests.unit.control.test_interrupted import (Crashing, catalog_v2, no_grace, restarted,
                                                 started, versions)

__all__ = ["no_grace"]  # the fixture, used here too


def test_the_same_catalog_sent_again_keeps_the_rollback_target(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        v1, v2 = controller.catalog_text, catalog_v2(controller)
        version = await controller.put_catalog(v2)
        assert await controller.put_catalog(v2) == version  # a retry after DEADLINE_EXCEEDED
        assert controller.previous_catalog == v1
        assert (await controller.get_catalog())["has_previous"]
        back = await controller.rollback_catalog()
        assert controller.catalog_text == v1 and versions(backend) == {back}
    asyncio.run(main())


def test_rollbacks_at_once_each_switch_from_what_the_one_before_left(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        v1, v2 = controller.catalog_text, catalog_v2(controller)
        await controller.put_catalog(v2)
        first, second = await asyncio.gather(controller.rollback_catalog(),
                                             controller.rollback_catalog())
        assert first != second and controller.catalog_version == second
        assert (controller.catalog_text, controller.previous_catalog) == (v2, v1)
        assert versions(backend) == {second}
    asyncio.run(main())


def test_a_rollback_retried_after_it_was_done_stays_on_the_version_it_named(tmp_path):
    """The first answer lost (DEADLINE_EXCEEDED at the gateway, done in the controller): the
    retry names the version it rolls back to, which runs, so it switches nothing."""
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        good, v2 = controller.catalog_version, catalog_v2(controller)
        await controller.put_catalog(v2)
        assert await controller.rollback_catalog(to_version=good) == good
        assert await controller.rollback_catalog(to_version=good) == good
        assert controller.catalog_version == good and controller.previous_catalog == v2
        assert versions(backend) == {good}
    asyncio.run(main())


def test_a_rollback_to_another_version_than_the_previous_one_switches_nothing(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        good = controller.catalog_version
        bad = await controller.put_catalog(catalog_v2(controller))
        with pytest.raises(ValueError, match=f"the previous catalog is {good!r}, not "
                                             f"'older' \\(catalog {bad!r} runs\\)"):
            await controller.rollback_catalog(to_version="older")
        assert controller.catalog_version == bad and versions(backend) == {bad}
    asyncio.run(main())


def test_a_put_that_waited_behind_a_rollback_it_did_not_expect_is_refused(tmp_path):
    """A put made while `bad` ran, queued behind the rollback an operator made meanwhile
    (it compiles before it waits for the lock), does not undo the rollback."""
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        good = controller.catalog_version
        bad = await controller.put_catalog(catalog_v2(controller))
        v3 = controller.catalog_text.replace("version: v2-", "version: v3-", 1)
        rolled, put = await asyncio.gather(
            controller.rollback_catalog(), controller.put_catalog(v3, expected_version=bad),
            return_exceptions=True)
        assert rolled == good
        assert isinstance(put, ValueError)
        assert f"catalog {good!r} runs, not the expected {bad!r}" in str(put)
        assert controller.catalog_version == good and versions(backend) == {good}
    asyncio.run(main())


def test_a_put_retried_after_it_was_done_is_not_refused_for_what_it_expected(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        v1, v2 = controller.catalog_text, catalog_v2(controller)
        good = controller.catalog_version
        version = await controller.put_catalog(v2, expected_version=good)
        assert await controller.put_catalog(v2, expected_version=good) == version
        assert controller.previous_catalog == v1 and versions(backend) == {version}
    asyncio.run(main())


def test_a_shard_that_does_not_answer_the_prepare_is_caught_up_not_holding_the_switch(
        tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 3)
        await controller.put_catalog(catalog_v2(controller))
        behind = controller.shards[2]
        backend.fail[(behind, "prepare")] = 1
        version = await controller.rollback_catalog()
        assert controller.catalog_version == version and behind in controller.lagging.catalog
        await controller.reconcile()
        assert versions(backend) == {version} and not controller.lagging.catalog
    asyncio.run(main())


def test_a_shard_that_refuses_the_catalog_stops_the_switch(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        before = controller.catalog_version
        def refuse(text: str) -> str:
            raise ValueError("the catalog does not fit this shard")

        backend.shards[controller.shards[1]].prepare = refuse
        with pytest.raises(ValueError, match=controller.shards[1]):  # CatalogRefused
            await controller.put_catalog(catalog_v2(controller))
        assert controller.catalog_version == before and versions(backend) == {before}
    asyncio.run(main())


def test_a_version_that_ran_before_is_refused_with_other_text(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        v1 = controller.catalog_text
        await controller.put_catalog(catalog_v2(controller))
        edited = v1.replace("\nname:", "\n# edited, version not bumped\nname:", 1)
        assert edited != v1
        with pytest.raises(ValueError, match="ran before with other text"):
            await controller.put_catalog(edited)
        assert controller.previous_catalog == v1
        assert await controller.put_catalog(v1) == versions(backend).pop()  # as it ran: fine
    asyncio.run(main())


@pytest.fixture
def compiles(monkeypatch):
    """The threads catalogs were compiled on (a text compiled before is not compiled again)."""
    threads: list[int] = []
    compile_catalog = compiler.compile_catalog

    def recorded(catalog):
        threads.append(threading.get_ident())
        return compile_catalog(catalog)

    monkeypatch.setattr(compiler, "compile_catalog", recorded)
    return threads


def fresh(text: str, tag: str) -> str:
    """Another version of `text`, never compiled in this process."""
    return text.replace("version: ", f"version: {tag}-{id(object())}-", 1)


def test_the_controller_compiles_catalogs_off_its_event_loop(tmp_path, compiles):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        compiles.clear()
        await controller.put_catalog(fresh(controller.catalog_text, "put"))
        compiler._compiled.clear()  # as if evicted since: a rollback compiles it again
        await controller.rollback_catalog()
        loop = threading.get_ident()
        assert len(compiles) == 2 and loop not in compiles
    asyncio.run(main())


def test_a_resumed_controller_compiles_the_saved_catalog_off_its_event_loop(tmp_path,
                                                                           compiles):
    from kairos.core.catalog import default_catalog_text

    async def main():
        backend, controller = await started(str(tmp_path), 2)
        await controller.put_catalog(fresh(controller.catalog_text, "resume"))
        compiler._compiled.clear()  # as if evicted since: the resume compiles it again
        compiler.compiled_from_text(default_catalog_text())  # the constructor's, not resumed
        compiles.clear()
        controller = await restarted(backend, str(tmp_path), 2)
        assert controller.catalog_version.startswith("resume-")
        assert len(compiles) == 1 and threading.get_ident() not in compiles
    asyncio.run(main())


def test_the_learner_and_the_shards_compile_a_catalog_off_their_event_loops(compiles):
    from kairos.core.catalog import default_catalog_text
    learner = LearnerActor.__ray_metadata__.modified_class.__ray_actor_class__(
        default_catalog_text(), "memory")
    prepare = ShardActor.__ray_metadata__.modified_class.prepare

    async def run(method, *args):  # ShardHost.run: on the data path, that is on the loop
        return method(SimpleNamespace(catalogs=SimpleNamespace(prepare=prepared)), *args)

    def prepared(text: str) -> str:
        return compiler.compiled_from_text(text).version

    async def main():
        compiles.clear()
        await learner.switch(fresh(default_catalog_text(), "learner"))
        await prepare(SimpleNamespace(host=SimpleNamespace(run=run)),
                      fresh(default_catalog_text(), "shard"))
        assert len(compiles) == 2 and threading.get_ident() not in compiles
    asyncio.run(main())


def test_the_version_a_rollback_goes_back_to_is_shown(tmp_path):
    """An operator's `kairos catalog rollback --to VERSION` needs the version: GetCatalog and
    the cluster status name it."""
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        v1 = controller.catalog_version
        assert (await controller.get_catalog())["previous_version"] == ""
        v2 = await controller.put_catalog(catalog_v2(controller))
        assert (await controller.get_catalog())["previous_version"] == v1
        assert (await controller.status())["previous_catalog_version"] == v1
        await controller.rollback_catalog(to_version=v1)
        assert (await controller.get_catalog())["previous_version"] == v2
    asyncio.run(main())


SPACED = re.sub(r"^version: .*$", 'version: "2026.12 launch"', default_catalog_text(),
                count=1, flags=re.M)  # valid before the version, name and character limits


@pytest.fixture
def older_release(monkeypatch):
    """Stores are started as a release before those limits did: with SPACED."""
    async def taken(self):
        pass
    monkeypatch.setattr(Controller, "check_first_catalog", taken)


def test_a_new_store_is_refused_a_first_catalog_the_newer_checks_refuse(tmp_path):
    async def main():
        backend = Crashing()
        backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                        unconfirmed=True)
        controller = Controller(backend, SPACED, n_partitions=64, store_url=str(tmp_path))
        with pytest.raises(CatalogError, match="version: expected at most 64 ASCII"):
            await controller.start(2)
        assert not backend.shards  # nothing created
    asyncio.run(main())


def test_the_running_catalog_sent_again_is_not_refused_by_checks_newer_than_it(
        tmp_path, older_release):
    """A catalog taken before the version, name and character limits (a version with a space)
    still runs after the upgrade; PutCatalog of its text (a retry, a deploy sending it again)
    answers that it runs, while a new catalog those checks refuse is refused."""
    spaced = SPACED

    async def main():
        backend = Crashing()
        backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                        unconfirmed=True)
        controller = backend.local_controller = Controller(backend, spaced, n_partitions=64,
                                                           store_url=str(tmp_path))
        await controller.start(2)
        assert await controller.put_catalog(spaced) == "2026.12 launch"
        with pytest.raises(CatalogError, match="version: expected at most 64 ASCII"):
            await controller.put_catalog(spaced.replace("2026.12 launch", "2026.12 launch 2"))
        assert (controller.catalog_text, controller.previous_catalog) == (spaced, None)
        assert versions(backend) == {"2026.12 launch"}
    asyncio.run(main())
