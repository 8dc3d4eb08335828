"""What an actor keeps for its restart: taken up by the same actor only, written whole, and a
file that cannot be read, or that another actor of the same name left, is removed."""
from __future__ import annotations

import json
import os

from kairos.cluster.remembered import Remembered


def test_what_an_actor_kept_its_restart_recalls(tmp_path):
    path = str(tmp_path / "kairos-gateway-0.port")
    assert Remembered(path, "a1").recall() is None  # nothing kept yet
    Remembered(path, "a1").keep({"port": 50051})
    assert Remembered(path, "a1").recall() == {"port": 50051}
    assert not os.path.exists(f"{path}.new")  # written aside, then moved over


def test_a_file_another_actor_of_the_name_left_is_removed(tmp_path):
    path = str(tmp_path / "kairos-shard-0000.api")
    Remembered(path, "before-the-runtime-restarted").keep({"port": 50100})
    assert Remembered(path, "a2").recall() is None
    assert not os.path.exists(path)


def test_a_torn_or_foreign_file_is_removed_and_logged(tmp_path, caplog):
    for text in ("", '{"actor": "a1", "ke', json.dumps([1, 2]), json.dumps({"actor": "a1"}),
                 json.dumps({"actor": "a1", "kept": 7}),
                 json.dumps({"actor": "a1", "kept": ["port"]})):
        path = tmp_path / "kept"
        path.write_text(text)
        with caplog.at_level("ERROR", logger="kairos.remembered"):
            assert Remembered(str(path), "a1").recall() is None
        assert not path.exists()
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 6


def test_a_record_without_what_the_restart_needs_is_removed(tmp_path, caplog):
    path = str(tmp_path / "kairos-gateway-0.port")
    Remembered(path, "a1").keep({})  # written by a version that kept something else
    with caplog.at_level("ERROR", logger="kairos.remembered"):
        assert Remembered(path, "a1").recall(("port",)) is None
    assert not os.path.exists(path)
    assert "lacks port" in caplog.text


def test_nowhere_to_keep_keeps_nothing():
    kept = Remembered(None, "a1")
    kept.keep({"port": 1})
    assert kept.recall() is None
