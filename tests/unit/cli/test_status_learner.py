"""`kairos status` says when the learner merges no learning because it was not told the
cluster's catalog (control/merging.py: unconfirmed), and when it holds the shards' syncs and
watches while a catalog switch is saved (switching), and when the store refuses its saves (the
merges it would lose with its process), as GetClusterStatus carries them."""
from __future__ import annotations

import argparse
import asyncio
from types import SimpleNamespace

from kairos.cluster.cli import operate
from kairos.cluster.gateway.admin import AdminService
from kairos.v1 import admin_pb2

from tests.unit.gateway.test_admin_deadlines import Context


def status_with(learner: dict) -> admin_pb2.ClusterStatus:
    class Controller:
        async def status(self) -> dict:
            return {"nodes": ["n"], "partitions": 16, "map_version": 3, "catalog_version": "v",
                    "resident": 0, "learner": learner, "shards": []}

    controller = Controller()
    service = AdminService(SimpleNamespace(backend=SimpleNamespace(controller=lambda: controller),
                                           node=None))
    return asyncio.run(service.GetClusterStatus(admin_pb2.ClusterStatusRequest(), Context(5)))


def shown(monkeypatch, capsys, st: admin_pb2.ClusterStatus) -> str:
    monkeypatch.setattr(operate, "Remote", lambda target: SimpleNamespace(status=lambda: st))
    assert operate.status(argparse.Namespace(target="127.0.0.1:1")) == 0
    return capsys.readouterr().out


def test_status_shows_an_unconfirmed_learner_and_the_syncs_it_refused(monkeypatch, capsys):
    st = status_with({"model_version": 9, "unconfirmed": True, "refused_unconfirmed": 7})
    assert st.learner_unconfirmed and st.learner_refused_unconfirmed == 7
    assert "LEARNER UNCONFIRMED" in shown(monkeypatch, capsys, st)
    assert "(7 syncs refused)" in shown(monkeypatch, capsys, st)


def test_status_shows_a_learner_saving_a_switch(monkeypatch, capsys):
    st = status_with({"model_version": 9, "switching": True})
    assert st.learner_switching and not st.learner_unconfirmed
    assert "LEARNER SWITCHING: saving a catalog switch" in shown(monkeypatch, capsys, st)


def test_status_says_nothing_of_a_confirmed_learner_or_an_older_one(monkeypatch, capsys):
    for learner in ({"model_version": 9, "unconfirmed": False, "switching": False},
                    {"model_version": 9}, {}):
        assert "LEARNER" not in shown(monkeypatch, capsys, status_with(learner))


def test_status_shows_a_learner_whose_saves_the_store_refuses(monkeypatch, capsys):
    """Refused saves were said in the learner's own log only: an operator's `kairos status`
    showed a learner that would lose its merges with its process as a healthy one."""
    st = status_with({"model_version": 9, "unsaved": 41, "saves_failed": 3,
                      "saves_failing_s": 75.4})
    assert (st.learner_unsaved, st.learner_saves_failed) == (41, 3)
    said = shown(monkeypatch, capsys, st)
    assert "LEARNER NOT SAVING: the store refused its last 3 save(s) of the posterior, for 75 s; "\
           "the 41 merges since the last that landed are lost" in said
    saved = status_with({"model_version": 9, "unsaved": 41, "saves_failed": 0})
    assert "LEARNER" not in shown(monkeypatch, capsys, saved)  # merges not saved yet: no failure
