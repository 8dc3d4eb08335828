"""The learner's posterior as the store's meta keeps it (learner.py saves it and takes it up):
the models' statistics, with the catalog they are laid out by (its version and text), the
catalog versions the learner ran, and the last delta taken from each shard incarnation."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np

from kairos.core.compiler import compiled_from_text
from kairos.core.models import COUNTS, keep_rows, sound_rows

from kairos.cluster.storage import blocks
from kairos.cluster.storage.blocks import BlockCorrupt

log = logging.getLogger("kairos.learner")
RAN_KEPT = 256  # the catalog versions run, saved: a delta of an older one is dropped, not refused
PER_MODEL = ("mean", "precision", *COUNTS)  # a row per model; `inputs` is per predictor


def save_models(learner: Any) -> bytes:
    """`learner`: the Learner (not imported: it imports this module)."""
    m = learner.models
    return blocks.pack({"catalog": learner.compiled.version, "catalog_text": learner.catalog_text,
                        "version": m.version, "ran": list(learner.ran),
                        "sequences": [[*key, *last] for key, last in learner.sequences.items()],
                        **{name: getattr(m, name) for name in (*PER_MODEL, "inputs")}})


def restore_models(learner: Any, blob: bytes, follow_catalog: bool = False) -> bool:
    """Take up a saved posterior; whether it was. One of another catalog text, whatever its
    version (the same version's rows may be other actions'), is taken up only with
    `follow_catalog` (a learner Ray restarted runs the catalog it was created with, while the
    saved one is the latest it switched to): the learner switches to the saved catalog first.
    Where either text is unknown (an older release saved none, a learner made without one),
    the version tells, and the learner stays unconfirmed (learner.py). Statistics a blob
    lacks (saved by an older release) start where a new table does. BlockCorrupt, KeyError,
    CatalogError for a blob that does not hold together (BlockCorrupt too for one whose shapes
    do not fit its catalog)."""
    saved = blocks.unpack(blob)
    text = saved.get("catalog_text")
    if text is None or learner.catalog_text is None:
        same = saved["catalog"] == learner.compiled.version
    else:
        same = text == learner.catalog_text
    if not same:
        if not follow_catalog or text is None:
            return False
        if compiled_from_text(text).version != saved["catalog"]:
            raise BlockCorrupt(f"the saved catalog text is not of version {saved['catalog']}")
        learner.switch(text)
    m = learner.models
    stats = {name: saved.get(name, getattr(m, name)) for name in (*PER_MODEL, "inputs")}
    stats["precision"] = m.converted(stats["precision"])  # saved under the other posterior
    if any(stats[name].shape != getattr(m, name).shape for name in stats):
        raise BlockCorrupt(f"the saved posterior's shapes do not fit catalog "
                           f"{learner.compiled.version}")
    ok = sound_rows(*(stats[name] for name in PER_MODEL))
    bad = int(len(ok) - ok.sum())
    if bad:  # saved before models were checked: those start again from their prior
        log.warning("learner: %d saved models are not finite; they start from their prior", bad)
        for name in PER_MODEL:
            stats[name] = keep_rows(ok, stats[name], getattr(m, name))
    if not np.isfinite(stats["inputs"]).all():
        stats["inputs"] = m.inputs
    # the deltas the posterior holds, so that one sent again is not merged twice
    sequences = {(str(shard), str(incarnation)): (int(sequence), float(heard))
                 for shard, incarnation, sequence, heard in saved.get("sequences", [])}
    m.adopt(SimpleNamespace(**stats, version=max(saved["version"], learner.version) + 1))
    m.refused += bad
    learner.ran = dict.fromkeys([*map(str, saved.get("ran", ())), *learner.ran][-RAN_KEPT:])
    for key, (sequence, heard) in sequences.items():
        if sequence > learner.sequences.get(key, (-1, 0.0))[0]:
            learner.sequences[key] = (sequence, heard)
    if text is not None:  # the text it was last switched to: the cluster's (learner.py)
        learner.unconfirmed = False
    return True
