"""The evidence kept with a catalog version outlives the controller: a new controller on the
same store takes it up with the catalog, and the previous version's with the previous one;
evidence sent with the running catalog again is kept, and saved."""
from __future__ import annotations

import asyncio

from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.core.compiler import default_compiled

from tests.support.local_backend import LocalBackend

EVIDENCE = {"json": '{"candidate": {"version": "v2"}}', "summary": "replay of 3 decisions"}


async def controller_on(backend: LocalBackend, store: str) -> Controller:
    controller = backend.local_controller = Controller(backend, n_partitions=16,
                                                       store_url=store)
    await controller.start(1)
    return controller


def test_a_restarted_controller_keeps_the_evidence_and_rolls_back_with_it(tmp_path):
    async def main():
        backend = LocalBackend()
        backend.local_learner = Learner(default_compiled())
        controller = await controller_on(backend, str(tmp_path))
        text = controller.catalog_text.replace("version: ", "version: v2-", 1)
        await controller.put_catalog(text, EVIDENCE)
        controller = await controller_on(backend, str(tmp_path))
        assert controller.catalog_text == text and controller.evidence == EVIDENCE
        assert (await controller.get_catalog())["evidence"] == EVIDENCE["json"]
        assert (await controller.status())["catalog_evidence"] == EVIDENCE["summary"]
        await controller.rollback_catalog()
        assert controller.evidence == {} and controller.previous_evidence == EVIDENCE
    asyncio.run(main())


def test_evidence_sent_with_the_running_catalog_again_is_kept_and_saved(tmp_path):
    async def main():
        backend = LocalBackend()
        backend.local_learner = Learner(default_compiled())
        controller = await controller_on(backend, str(tmp_path))
        v1 = controller.catalog_text
        text = v1.replace("version: ", "version: v2-", 1)
        version = await controller.put_catalog(text)
        assert await controller.put_catalog(text, EVIDENCE) == version  # not switched again
        assert await controller.put_catalog(text) == version  # a resend without: kept
        assert controller.evidence == EVIDENCE and controller.previous_catalog == v1
        controller = await controller_on(backend, str(tmp_path))
        assert controller.evidence == EVIDENCE and controller.previous_catalog == v1
    asyncio.run(main())
