"""What an actor keeps for its next incarnation: how it served (a gateway's port, a shard's
endpoint), so that after Ray restarts its process it serves again as it did.

A small JSON file in this node's Ray session directory, which outlives the actor's process but
not the Ray session. It is written whole or not at all (a torn file would stop every later
restart), and it names the actor that wrote it: a runtime stopped and started again within one
Ray session creates actors of the same names with new ids, and a file an earlier one left is
removed rather than taken up.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import ray

log = logging.getLogger("kairos.remembered")


class Remembered:
    def __init__(self, path: str | None, actor: str):
        """`path` None: nowhere to keep anything (`recall` finds nothing, `keep` does
        nothing)."""
        self.path = path
        self.actor = actor

    @classmethod
    def of_actor(cls, name: str) -> Remembered:
        """The file `name` of the calling actor, in its node's session directory."""
        return cls(_session_file(name), ray.get_runtime_context().get_actor_id())

    def recall(self, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """What this actor kept before it was restarted, holding the `required` keys; None if
        nothing (a file another actor left, or one that cannot be read or lacks a key, is
        removed)."""
        if not self.path or not os.path.exists(self.path):
            return None
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved["actor"] == self.actor:
                kept = saved["kept"]
                if all(key in kept for key in required):
                    return dict(kept)
                log.error("%s lacks %s; not taken up", self.path,
                          ", ".join(k for k in required if k not in kept))
        except (OSError, ValueError, KeyError, TypeError):
            log.exception("%s cannot be read; not taken up", self.path)
        self.forget()
        return None

    def keep(self, values: dict[str, Any]) -> None:
        if not self.path:
            return
        written = f"{self.path}.new"
        with open(written, "w", encoding="utf-8") as f:
            json.dump({"actor": self.actor, "kept": values}, f)
        os.replace(written, self.path)


    def forget(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.remove(self.path)


def _session_file(name: str) -> str | None:
    """(None: no session directory to be had, so a restart cannot learn what the process
    before it did.)"""
    try:
        node = ray._private.worker.global_worker.node
        directory = os.path.join(node.get_session_dir_path(), "kairos")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, name)
    except Exception:
        log.warning("no Ray session directory for %s; a restart may not serve as it did",
                    name)
        return None
