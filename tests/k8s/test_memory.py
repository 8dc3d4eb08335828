"""A Ray pod's memory limit holds what runs in it at the most customers its shards keep: Ray's
object store (in /dev/shm, counted against the limit), Ray's own processes, the Kairos
processes empty, each shard's decision memo full, and each shard's residents at the rows its
profile table is made for (KAIROS_RESIDENT_LIMIT, the KAIROS_RESIDENT_OVERFLOW waiting to be
passivated, a round's new customers, the sleepers two ticks wake); and the autoscaler's
resident trigger (KAIROS_AUTOSCALE_SHARD_RESIDENT) comes well before that limit, so that a
worker is asked for while the shards still have room. Held for base and every overlay, so that
an edit of the memory, the shards, the store or the settings alone cannot break it silently."""
from __future__ import annotations

import json

import pytest

from kairos.core.compiler import default_compiled
from kairos.core.engine import DECISION_CACHE_SIZE, DECISION_MEMO_BYTES

from tests.k8s.quantities import quantity_bytes
from tests.k8s.test_manifests import OVERLAYS
from tests.k8s.test_operations import (
    container_settings,
    controller_settings,
    ray_groups,
    shard_residents,
)
from tests.support.manifests import REPO, env_of

# The committed run of `python -m bench.resident` (2 cores, 4 shards on one node): the Kairos
# processes' summed RSS empty (4 shards, controller, learner, gateway) and per resident customer.
RESIDENT_RUN = REPO / "bench/results/resident-20261207T004249Z.json"
KAIROS_PROCESS_BYTES = 202 << 20  # an empty Kairos process: 1,413 MiB over 7, rounded up
# 1,046.5 bytes a resident customer at 1,000,000 of them, rounded up 5%: the figure counts a
# profile row and its ring, not the idempotency keys, outcome keys and taught labels a
# customer's keyed outcomes add (MEMORY_MARGIN is for those), nor the decision memo (MEMO_BYTES)
RESIDENT_BYTES = 1100
# The decision memo (core/engine.py), a shard's fixed cost once it has decided
# DECISION_CACHE_SIZE times, whoever its customers: at most that many entries, whose model
# inputs take at most DECISION_MEMO_BYTES, and each entry's own objects besides (its dict
# slot, the customer id, the actions shown with their values, what its outcomes taught). The
# committed run of `python -m bench.costs` kept 882 bytes an entry for a decision of the default
# catalog (its 11 inputs, 88 bytes of them) whose action was accepted: 794 besides the inputs,
# rounded up. Entries x (MEMO_ENTRY_BYTES + inputs) stays under MEMO_BYTES whatever the
# number of inputs; a placement that shows more actions keeps more an entry (MEMORY_MARGIN), and
# so does a decision the memo set aside for a channel at its floor (some 90-120 bytes more, at
# most half the entries: 4-6 MiB a shard, also within MEMORY_MARGIN).
COSTS_RUN = REPO / "bench/results/costs-20261206T130911Z.json"
MEMO_ENTRY_BYTES = 800
MEMO_BYTES = DECISION_MEMO_BYTES + DECISION_CACHE_SIZE * MEMO_ENTRY_BYTES
# Ray's own processes on a node: an allowance. Ray 2.60's head, idle (`ray start --head` with
# token auth and the dashboard, 2 CPUs), measured on 2026-12-07: 640 MiB PSS summed over the
# GCS, the raylet, the dashboard head with its 9 module processes, forkserver and resource
# tracker, the dashboard agent, the runtime env agent, the log monitor, the autoscaler
# monitor and the client server (their RSS summed to 1.27 GiB, counting shared pages once a
# process; the cgroup counts a page once, as PSS does): 1 GiB leaves 384 MiB for Ray under
# load. A worker's are not measured here: an idle KubeRay worker's (raylet, dashboard agent,
# runtime env agent, log monitor) were 460 MB in ray-project/ray#53829 (Ray 2.46).
RAY_HEAD_BYTES = 1 << 30
RAY_WORKER_BYTES = 512 << 20
# Of what is left for the residents, the share they may take: the rest for what
# RESIDENT_BYTES leaves out, sleepers held past the limit for their timers (which
# RESIDENT_LIMIT does not cap), queues and Python's heap fragmentation.
MEMORY_MARGIN = 0.2
# The autoscaler asks for a worker once the shards hold this share of RESIDENT_LIMIT on
# average (the defaults' 1,000,000 of 2,000,000): a shard hotter than the average still has
# room before it passivates.
TRIGGER_SHARE = 0.5


def test_the_per_process_and_per_customer_figures_are_the_committed_benchmarks():
    run = json.loads(RESIDENT_RUN.read_text())
    processes = run["shards"] + 3  # and the controller, the learner and a gateway
    per_process = run["baseline_rss_mib"] * 2 ** 20 / processes
    assert per_process <= KAIROS_PROCESS_BYTES <= per_process * 1.01, per_process
    per_customer = max(p["bytes_per_customer"] for p in run["phases"])
    assert per_customer * 1.05 <= RESIDENT_BYTES <= per_customer * 1.06, per_customer
    costs = json.loads(COSTS_RUN.read_text())["probes"]["customer_bytes"]
    assert costs["inputs"]["catalog"] == "default"
    per_entry = costs["figures"]["bytes_decision_memo"]["median"] \
        - 8 * default_compiled().n_predictors
    assert per_entry <= MEMO_ENTRY_BYTES <= per_entry * 1.01, per_entry


def node_shards(overlay: str, name: str, group: dict) -> int:
    """The shards a pod of the group holds: the head's `kairos start --shards`, a worker's
    one per CPU that the controller gives a node that joins (control/nodes.py)."""
    if name == "head":
        return int(env_of(group["template"]["spec"]["containers"][0])["KAIROS_SHARDS"]["value"])
    (per_cpu,) = controller_settings(overlay, "SHARDS_PER_CPU").values()
    return max(1, round(float(group["rayStartParams"]["num-cpus"]) * per_cpu))


@pytest.mark.parametrize("overlay", (*OVERLAYS, "base"))
def test_a_ray_pods_memory_holds_its_shards_at_their_resident_limit(overlay):
    for name, group in ray_groups(overlay):
        container = group["template"]["spec"]["containers"][0]
        limit = quantity_bytes(container["resources"]["limits"]["memory"])
        store = int(group["rayStartParams"]["object-store-memory"])
        shards = node_shards(overlay, name, group)
        processes = shards + (3 if name == "head" else 1)  # controller, learner; a gateway
        ray = RAY_HEAD_BYTES if name == "head" else RAY_WORKER_BYTES
        left = limit - store - ray - processes * KAIROS_PROCESS_BYTES - shards * MEMO_BYTES
        room = left * (1 - MEMORY_MARGIN) / shards
        kept = shard_residents(container)
        assert kept * RESIDENT_BYTES <= room, \
            f"{overlay} {name}: {shards} shards of {kept:,} customers need " \
            f"{kept * RESIDENT_BYTES / 2 ** 20:,.0f} MiB each, the memory limit leaves " \
            f"{room / 2 ** 20:,.0f} MiB each"


@pytest.mark.parametrize("overlay", (*OVERLAYS, "base"))
def test_the_autoscaler_asks_for_workers_before_shards_reach_their_resident_limit(overlay):
    (trigger,) = controller_settings(overlay, "AUTOSCALE_SHARD_RESIDENT").values()
    for name, group in ray_groups(overlay):
        container = group["template"]["spec"]["containers"][0]
        (limit,) = container_settings(container, "RESIDENT_LIMIT").values()
        assert trigger <= limit * TRIGGER_SHARE, \
            f"{overlay} {name}: workers are asked for at {trigger:,} residents a shard, " \
            f"the shards keep {limit:,}"
