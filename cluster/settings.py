"""Every runtime tunable, in one place. Each reads an environment override of the same name
prefixed KAIROS_ (`KAIROS_TICK_S=0.05`), checked when this module is imported: a value that
is not a number, or is out of its range (a tick of 0 s, a queue of 0 requests), fails with
the variable's name, so a mistyped deployment stops at start instead of misbehaving.

Each node's Ray workers inherit the environment of the process that started Ray on that node:
an override set before `kairos up` (or before a test starts its cluster) reaches every actor of
its nodes, but on a cluster whose nodes each run their own `ray start` (KubeRay's pods), a
setting the shards or gateways read must be set on every node alike (k8s/README.md, "Settings by
node").
"""
from __future__ import annotations

import math
import os

PREFIX = "KAIROS_"


def number(name: str, default: float, *, low: float = 0.0, high: float = math.inf,
           above: bool = False, high_of: str = "") -> float:
    """A float tunable in [low, high] (or (low, high] with `above`; `high_of`: the setting
    that sets `high`)."""
    return _checked(name, default, float, low, high, above, high_of)


def integer(name: str, default: int, *, low: int = 1, high: float = math.inf,
            high_of: str = "") -> int:
    """An integer tunable in [low, high] (`high_of`: the setting that sets `high`)."""
    return _checked(name, default, int, low, high, False, high_of)


def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(PREFIX + name, default)
    if value not in allowed:
        raise ValueError(f"{PREFIX}{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def text(name: str, default: str) -> str:
    return os.environ.get(PREFIX + name, default)


def _checked(name: str, default, cast: type, low: float, high: float, above: bool,
             high_of: str = ""):
    raw = os.environ.get(PREFIX + name)
    if raw is None:
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise ValueError(f"{PREFIX}{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value > high or value < low or (above and value == low):
        shown = ("{:.0f}" if cast is int else "{:g}").format  # exactly, not 1.23457e+06
        bound = f"> {shown(low)}" if above else f">= {shown(low)}"
        if high != math.inf:
            bound += f" and <= {shown(high)}" + (f" ({PREFIX}{high_of})" if high_of else "")
        raise ValueError(f"{PREFIX}{name} must be {bound}, got {raw!r}")
    return value


# -- names -------------------------------------------------------------------------------------
NAMESPACE = "kairos"  # Ray namespace of every Kairos actor
CONTROLLER_NAME = "kairos-controller"
LEARNER_NAME = "kairos-learner"

# -- shards ------------------------------------------------------------------------------------
# Requests a shard has admitted but not yet processed; past it, new batches answer BUSY.
SHARD_QUEUE_LIMIT = integer("SHARD_QUEUE_LIMIT", 20_000)
# Requests one kernel round may take from a shard's queue. At most the default, 2,048: what a
# round's records take past the bytes SHARD_ROUND_BYTES costs (an event's sequence number, a
# Forget's time: RECORD_EXTRA, 16 bytes a request) and the states its links' Takes hand over
# (not known before the customer is loaded: at most `taken_budget`, shard/rounds.py) come out
# of the frame's margin, MAX_FRAME less the round's bytes, at least 32 MiB.
SHARD_ROUND_LIMIT = integer("SHARD_ROUND_LIMIT", 2048, high=2048)
# Bytes of requests (as msgpack) one round may take: a round is journaled as one frame, which
# must stay under the journal's 64 MiB MAX_FRAME (storage/frames.py). Its records can take more
# than its requests (an event's adds its sequence number, a link's Take the customer's state),
# so a quarter of it, and at most half: a round's Takes hand over states of the other half. An
# event counts besides its bytes a Fire record per timer of the catalog (at most MAX_TIMERS):
# its customer's overdue timers fire in its round; a Decide recording its impression an
# Outcome record per action the catalog's largest placement shows (shard/rounds.py).
SHARD_ROUND_BYTES = integer("SHARD_ROUND_BYTES", 16 << 20, low=1 << 10, high=32 << 20)
# Customers not seen yet that a shard keeps watches of (a watch waits for the customer's first
# event): snapshots and moves carry them all, about 120 bytes each, so a registration whose
# unregistration never came is kept for good. Past it a new one answers BUSY.
SHARD_UNSEEN_WATCHES = integer("SHARD_UNSEEN_WATCHES", 100_000)
# A customer idle this long is passivated to the store.
PASSIVATE_IDLE_S = number("PASSIVATE_IDLE_S", 900.0, above=True)
# Most customers resident in one shard; past it the least recently used are passivated.
RESIDENT_LIMIT = integer("RESIDENT_LIMIT", 2_000_000)
# How long one tick may spend passivating (one home at least), in chunks of at most
# PASSIVATE_CHUNK homes sized by the store's pace: requests wait for it, and the rest go on
# later ticks. A directory store writes (and fsyncs) a home in a few ms (4 ms on a 2-core test
# machine, where a shard passivated about 10 a second), so some 10 to 100 a second go by
# default: customers that fell idle together leave over minutes to hours. A tick after requests
# were refused at the resident ceiling (RESIDENT_OVERFLOW) may take PASSIVATE_CROWDED_S (at most
# half of TICK_S): every request on the shard waits for it.
PASSIVATE_BUDGET_S = number("PASSIVATE_BUDGET_S", 0.01)
PASSIVATE_CROWDED_S = 0.05
PASSIVATE_CHUNK = integer("PASSIVATE_CHUNK", 64)
# Residents past RESIDENT_LIMIT wait for the ticks' budget, at most this many: then a request
# that would bring in a customer not resident answers BUSY (to its caller) until ticks passivate
# some. At most the limit (a shard with a smaller limit clamps it to its own); the profile
# table reserves rows for both (residency.py).
RESIDENT_OVERFLOW = integer("RESIDENT_OVERFLOW", min(100_000, RESIDENT_LIMIT // 20), low=0,
                            high=RESIDENT_LIMIT, high_of="RESIDENT_LIMIT")
# How often a shard fires due timers and passivates: timers fire within this of their due time.
# A shard that served nothing since its last tick sleeps until its next timer or snapshot is
# due, at most a second (shard/ticks.py).
TICK_S = number("TICK_S", 0.1, low=0.001, high=60.0)
# Timer firings one tick may apply, as many as a request round by default, their records held
# to SHARD_ROUND_BYTES too, so a tick's journal frame stays under MAX_FRAME however long the ids;
# those due past it wait for the next ticks, earliest first. At the defaults a shard fires about
# 15,000 timers a second (2,048 a tick, the tick about 40 ms, on the 2-core test machine:
# bench/results/costs-20261206T003319Z.md): timers falling due slower than that fire within a
# tick; a burst waits a tick per 2,048 (70,000 at once about 4.9 s), each tick holding the event
# loop some 40 ms rather than all of it at once.
TICK_FIRE_LIMIT = integer("TICK_FIRE_LIMIT", SHARD_ROUND_LIMIT)
# How often a shard that learned something sends its model delta to the learner (and adopts the
# version that answers); a shard that learned nothing waits in a long poll (LONG_POLL_S) instead.
MODEL_SYNC_S = number("MODEL_SYNC_S", 0.5, low=0.01, high=3600.0)
# How often a shard publishes its metrics and refreshes the statistics `health` returns.
METRICS_FLUSH_S = number("METRICS_FLUSH_S", 1.0, low=0.01, high=3600.0)
# A sender a restarted shard has not seen starts at the lowest sequence number that arrives
# within this long (its earlier batches went to the previous incarnation).
SESSION_START_S = number("SESSION_START_S", 2.0, above=True, high=60.0)
# The address shards serve their data path on (transport/dataplane.py): empty for the node's
# address as Ray knows it; `kairos up` and the tests, all on one machine, use 127.0.0.1.
DATA_HOST = text("DATA_HOST", "")
# Whether the data plane is TLS with a pinned per-incarnation certificate (transport/
# pinned.py): "auto" when the shard binds an address other than loopback (on loopback only the
# node's own processes are on the path, and TLS would only cost CPU), else always or never.
PLANE_TLS = choice("PLANE_TLS", "auto", ("auto", "on", "off"))
# The data plane's limits (transport/dataplane.py). A frame is one batch of requests or its
# replies: a batch of CLIENT_BATCH_LIMIT requests of a few KiB each is about 1 MiB, so 64 MiB
# leaves margin (a client refuses to send a larger batch; a shard answers a larger reply with
# an error for that call). No array or map in a frame is longer than a batch or a catalog's
# actions (an explanation lists up to 10,000), so 65,536 elements: what a header can make the
# receiver allocate before the elements arrive.
PLANE_FRAME_BYTES = integer("PLANE_FRAME_BYTES", 64 << 20, low=1 << 20)
PLANE_CONTAINER_LEN = integer("PLANE_CONTAINER_LEN", 65_536, low=1024)
# Connections one shard serves at once (more are closed unread), connections it lets wait
# for their handshake, a quarter of them from one address (a waiting one costs a socket and a
# task; transport/admission.py says which make room for which), and calls it works on at once
# per connection (past it the connection is not read until one is answered).
PLANE_CONNECTIONS = integer("PLANE_CONNECTIONS", 1024)
PLANE_HANDSHAKES = integer("PLANE_HANDSHAKES", 512)
PLANE_INFLIGHT_CALLS = integer("PLANE_INFLIGHT_CALLS", 64)
# New connections per second one source (an IPv4 address or an IPv6 /64) may open to a shard,
# after a burst of PLANE_CONNECTIONS (transport/admission.py): a client keeps its connection
# and opens another only after a failure or a restart, so only a flood keeps opening them, and
# over TLS each costs the shard's serving loop about 0.6 ms of CPU before it proves anything.
PLANE_CONNECT_RATE = number("PLANE_CONNECT_RATE", 64.0, above=True)
# A batch the shard has not answered this long after it was sent: the shard is wedged (a
# stopped process keeps its TCP connections open, so keepalive never notices); the client
# drops the connection, failing what was on it, and the next batch connects anew.
PLANE_CALL_S = number("PLANE_CALL_S", 30.0, above=True, high=3600.0)
# A shard fails a batch after a gap within half of PLANE_CALL_S (shard/sequencer.py), so that
# the client hears of it before it drops the connection; an unseen session starts within that.
if SESSION_START_S >= PLANE_CALL_S / 2:
    raise ValueError(f"{PREFIX}SESSION_START_S ({SESSION_START_S:g}) must be less than half of "
                     f"{PREFIX}PLANE_CALL_S ({PLANE_CALL_S:g})")

# -- durability ----------------------------------------------------------------------------------
# Where shards keep customers, snapshots and journals: "memory" (volatile), a directory, or
# redis://host:port/db. `kairos up` defaults to a directory (see cli/main.py).
STORE = text("STORE", "memory")
# Journal durability: "fsync" (an fsync per batch before the ack), "os" (survives a process
# crash, not a power cut) or "off" (recovery has only the snapshots).
JOURNAL_POLICIES = ("fsync", "os", "off")
JOURNAL_POLICY = choice("JOURNAL_POLICY", "fsync", JOURNAL_POLICIES)
# A partition is snapshotted this long after its first change since its last snapshot, or
# sooner once the journal holds SNAPSHOT_BACKLOG records since that change; the journal keeps
# everything since the oldest change not yet in a snapshot. Snapshotting costs about 2 ms of a
# shard's thread per partition of 250 customers (export, write, fsync): with every partition
# busy, a 60 s cycle is ~4 % of it, and recovery replays at most about a minute of events.
SNAPSHOT_AFTER_S = number("SNAPSHOT_AFTER_S", 60.0)
SNAPSHOT_BACKLOG = integer("SNAPSHOT_BACKLOG", 1_000_000)
# How long one tick may spend on snapshots (at least one partition): requests wait for it.
SNAPSHOT_BUDGET_S = number("SNAPSHOT_BUDGET_S", 0.003, above=True)
# How often a shard recounts the customers it has in the store (for status and move sizing),
# if it wrote or deleted any since, and, if not, STORE_RECOUNT_S (shard/storecount.py: what
# no change of its own shows, an operator restoring homes, is that far behind; checked every
# STORE_COUNT_S, so a smaller STORE_RECOUNT_S acts as STORE_COUNT_S).
STORE_COUNT_S = number("STORE_COUNT_S", 10.0, above=True, high=86_400.0)
STORE_RECOUNT_S = number("STORE_RECOUNT_S", 300.0, above=True, high=86_400.0)
# Idempotency keys are remembered per customer, with the customer's state (in its home, its
# partition's snapshot, and moves): a retry is recognised for at least KEY_RETENTION_S after
# the first application, among the customer's KEYS_PER_CUSTOMER most recent keys (a
# customer's own newer keys evict its older ones; nobody else's can).
KEYS_PER_CUSTOMER = integer("KEYS_PER_CUSTOMER", 256)
KEY_RETENTION_S = number("KEY_RETENTION_S", 86_400.0, above=True)
# Aliases one customer may hold, linked or claimed by links under way (cluster/identity.py);
# a LinkIdentity of another one is FAILED_PRECONDITION. A ForgetCustomer's reply lists them
# all, about 1 KiB each at most (a 256-character value), and the customer's block keeps each
# with its link: at the default, 1 MiB at most, far within the data plane's limits (PLANE_*).
ALIASES_PER_CUSTOMER = integer("ALIASES_PER_CUSTOMER", 1024, high=PLANE_CONTAINER_LEN // 4)
# How far ahead of the gateway's clock an event's or an outcome's time may be (a caller's
# clock running fast); later ones are INVALID_ARGUMENT: an accept dated decades ahead would
# hold its action's cooldown, or a reject its suppression, for that long.
CLOCK_SKEW_S = number("CLOCK_SKEW_S", 300.0, high=86_400.0)
# How long a decision accepts outcomes (Respond) after a shard issued it.
OUTCOME_WINDOW_S = number("OUTCOME_WINDOW_S", 7 * 86_400.0, above=True)
# Outcomes a customer may report per OUTCOME_RATE_WINDOW_S; past it, RESOURCE_EXHAUSTED.
OUTCOMES_PER_CUSTOMER = integer("OUTCOMES_PER_CUSTOMER", 60)
OUTCOME_RATE_WINDOW_S = number("OUTCOME_RATE_WINDOW_S", 60.0, above=True)
# The labels outcomes taught a decision's actions, kept per customer apart from its idempotency
# keys (cluster/shard/outcomes.py) for OUTCOME_WINDOW_S: past its LABELS_PER_CUSTOMER most
# recent (32 bytes each), a later outcome teaches an older decision's label again.
LABELS_PER_CUSTOMER = integer("LABELS_PER_CUSTOMER", 64)
# The decision log (cluster/shard/decisionlog.py): every decision a shard makes and every
# outcome it takes, beside the journal. 0 turns it off. A shard's log keeps records this long
# and at most this many bytes (the oldest go first), and holds at most DECISION_LOG_PENDING
# records not yet written (past it, new ones are dropped and counted: the store is behind).
DECISION_LOG = integer("DECISION_LOG", 1, low=0, high=1)
DECISION_LOG_RETENTION_S = number("DECISION_LOG_RETENTION_S", 3 * 86_400.0, above=True)
DECISION_LOG_MAX_BYTES = integer("DECISION_LOG_MAX_BYTES", 1 << 30, low=1 << 20)
DECISION_LOG_PENDING = integer("DECISION_LOG_PENDING", 100_000)
# How long a shard's log writer waits after a round for more to write at once (decisionlog.py).
DECISION_LOG_WRITE_S = number("DECISION_LOG_WRITE_S", 0.05, high=1.0)
# How often a shard applies the retention bounds to its log.
DECISION_LOG_TRIM_S = number("DECISION_LOG_TRIM_S", 60.0, above=True, high=86_400.0)
# How long a call to Redis may take before the store counts as failed (the shard rebuilds).
REDIS_TIMEOUT_S = number("REDIS_TIMEOUT_S", 5.0, above=True, high=600.0)
# Replicas of the Redis server that must hold each write Kairos acknowledges or relies on (a
# journal batch, a fence, an owner, a snapshot, a home, meta) before it counts as done: each is
# followed by WAIT on its connection (storage/redis_replicas.py). 0: no WAIT (the primary's AOF
# alone; run no failover). Fewer acknowledging within REDIS_REPLICAS_WAIT_S: the write fails
# (the store is UNAVAILABLE). At most half of REDIS_TIMEOUT_S, so WAIT's reply comes back in it.
# At most 16 replicas: more than a deployment waits for, so a typo (100 for 1) fails at start
# rather than failing every write.
REDIS_REPLICAS = integer("REDIS_REPLICAS", 0, low=0, high=16)
REDIS_REPLICAS_WAIT_S = number("REDIS_REPLICAS_WAIT_S", min(1.0, REDIS_TIMEOUT_S / 2),
                               above=True, high=REDIS_TIMEOUT_S / 2,
                               high_of="REDIS_TIMEOUT_S / 2")
# The bytes of each Redis value a partition's snapshot past 192 MiB is written in
# (storage/redis_snapshots.py; one up to 192 MiB stays one value): one SET each, so one exchange
# within the socket timeout, and far below what a replica's output buffer holds (its hard limit
# 256 MiB, its soft one 64 MiB for 60 s). Its bounds are those every reader checks a chunked
# value's header by (storage/redis_chunks.py), whatever chunk size the writer took.
REDIS_CHUNK_LEAST, REDIS_CHUNK_MOST = 1 << 20, 64 << 20
REDIS_SNAPSHOT_CHUNK = integer("REDIS_SNAPSHOT_CHUNK", 16 << 20, low=REDIS_CHUNK_LEAST,
                               high=REDIS_CHUNK_MOST)

# -- control -----------------------------------------------------------------------------------
# How often the controller looks for restarted shards and nodes that joined or left (its
# rounds back off to 8 s while the cluster is settled; the node table is still read this often:
# control/pace.py).
CONTROL_LOOP_S = number("CONTROL_LOOP_S", 1.0, low=0.01, high=3600.0)
# How long a long poll (the routing table's, a shard's watch of the learner's models) waits for
# a newer version before answering "no change".
LONG_POLL_S = number("LONG_POLL_S", 10.0, above=True, high=3600.0)
# How long a take-up after a full restart (a controller started again on a saved cluster, none
# of whose shards answers) waits for nodes before it creates the shards, while the alive nodes
# cannot host them at no more shards a node than the cluster was spread when it was saved
# (control/takeup.py): the head's node is back first, and KubeRay's workers tens of seconds to
# minutes later. After it they are placed on the nodes alive, more to a node. It ends sooner
# once as many nodes serve as the cluster last ran on, which forgets a node only once the
# cluster has run this long without it (takeup.py NodesRun). 0: no wait, and no warning (a
# cluster whose nodes all start together). A head's start may take it besides
# KAIROS_SHARD_START_S: its startup probe must allow for both (k8s/base/raycluster.yaml).
TAKEUP_NODES_WAIT_S = number("TAKEUP_NODES_WAIT_S", 120.0, high=3600.0)
# 1: a start on a saved cluster (`kairos start --shards N` on the store of one that stopped)
# keeps the shards it takes up, N a floor (scaled up to, never down); 0: it scales to N, as
# `kairos up --shards` is asked to. A KubeRay head starts with the same N at every restart, so
# it sets 1 (k8s/base/raycluster.yaml): else a full restart would move every joiner's
# partitions into N shards before the head serves (control/takeup.py).
RESUME_KEEPS_SHARDS = integer("RESUME_KEEPS_SHARDS", 0, low=0, high=1)
# How long a shard that was scaled away lingers, answering MOVED, before it is stopped.
RETIRE_GRACE_S = number("RETIRE_GRACE_S", 5.0)
# Share of all partitions one rebalancing round may move (Akka moves at most 10 %): requests
# for a moving partition wait, so smaller rounds mean shorter waits and more rounds.
MAX_MOVE_FRACTION = number("MAX_MOVE_FRACTION", 0.1, above=True, high=1.0)
# Customers one round may move at most (by the shards' mean per partition): a round freezes
# its partitions until they are adopted, so this bounds how long their requests wait.
MOVE_ROUND_CUSTOMERS = integer("MOVE_ROUND_CUSTOMERS", 2000)
# Shards a node that joins gets, per CPU it offers Ray (at least one): the shard count grows
# with the cluster. A shard is one single-threaded process, so one per core is the default.
SHARDS_PER_CPU = number("SHARDS_PER_CPU", 1.0, above=True, high=64.0)
# How long a draining node's gateway keeps serving after its health turned NOT_SERVING, so that
# load balancers and readiness probes take it out before it stops (Kubernetes: a readiness
# probe's period times its failure threshold, plus the endpoints' propagation).
DRAIN_UNREADY_S = number("DRAIN_UNREADY_S", 5.0, high=3600.0)
# How long a gateway's stop lets the calls it is serving finish.
GATEWAY_STOP_GRACE_S = number("GATEWAY_STOP_GRACE_S", 10.0, high=3600.0)
# The most often the learner saves its posterior to the store: the most learning a restart
# of the learner can lose.
LEARNER_SAVE_S = number("LEARNER_SAVE_S", 2.0, high=3600.0)
# Deadline of one control call to a shard, the learner or a sink (freeze, adopt, prepare,
# commit, watch, health...): a shard that does not answer in time (stopped, wedged) fails that
# step with an error naming it, and the controller retries from its control loop.
CONTROL_CALL_S = number("CONTROL_CALL_S", 30.0, above=True, high=3600.0)
# Deadline of creating a shard or starting one (recovery replays its store).
SHARD_START_S = number("SHARD_START_S", 600.0, above=True, high=86400.0)
# Deadline of starting a node's gateway (it connects to the shards and compiles the catalog);
# a gateway that misses it is tried again later, and holds up no other control step longer.
GATEWAY_START_S = number("GATEWAY_START_S", 60.0, above=True, high=3600.0)
# Deadline of an admin call to the controller that fans out to every shard (ScaleShards,
# PutCatalog, status, channel watches): bounded even when the controller itself is stuck.
ADMIN_CALL_S = number("ADMIN_CALL_S", 600.0, above=True, high=86400.0)

# -- autoscaling (control/autoscaling.py) --------------------------------------------------------
# Workers (Ray nodes besides the controller's) the controller keeps asking Ray's autoscaler
# for, between these bounds (a KubeRay worker group's minReplicas and maxReplicas).
# AUTOSCALE_MAX_WORKERS 0, the default, asks for nothing: Ray's autoscaler is left alone.
AUTOSCALE_MIN_WORKERS = integer("AUTOSCALE_MIN_WORKERS", 0, low=0, high=10_000)
AUTOSCALE_MAX_WORKERS = integer("AUTOSCALE_MAX_WORKERS", 0, low=0, high=10_000)
# The custom Ray resource every worker offers exactly one of (its `ray start --resources`):
# the request is that many one-unit bundles of it, so one bundle is one worker.
AUTOSCALE_RESOURCE = text("AUTOSCALE_RESOURCE", "kairos_worker")
# What one shard is to carry: decisions and events per second, resident customers, queued
# requests. The load is the fullest of the three as a share of these (1.0: at capacity).
# 250/s: `bench.load`'s highest rate with p99 <= 10 ms on 2 cores was 513/s with 2 shards.
AUTOSCALE_SHARD_RATE = number("AUTOSCALE_SHARD_RATE", 250.0, above=True)
AUTOSCALE_SHARD_RESIDENT = integer("AUTOSCALE_SHARD_RESIDENT", 1_000_000)
AUTOSCALE_SHARD_QUEUE = integer("AUTOSCALE_SHARD_QUEUE", 1_000)
# A worker is added once the load has been at capacity for AUTOSCALE_UP_AFTER_S; one is
# removed once the load, spread over the shards of the others, would have stayed under
# AUTOSCALE_DOWN_SHARE for AUTOSCALE_DOWN_AFTER_S (the gap between 1.0 and it is the
# hysteresis). After a step, no other for AUTOSCALE_COOLDOWN_S.
AUTOSCALE_DOWN_SHARE = number("AUTOSCALE_DOWN_SHARE", 0.6, above=True, high=0.95)
AUTOSCALE_UP_AFTER_S = number("AUTOSCALE_UP_AFTER_S", 30.0, high=86_400.0)
AUTOSCALE_DOWN_AFTER_S = number("AUTOSCALE_DOWN_AFTER_S", 300.0, high=86_400.0)
AUTOSCALE_COOLDOWN_S = number("AUTOSCALE_COOLDOWN_S", 120.0, high=86_400.0)

# -- clients (the gateway's route to the shards) -----------------------------------------------
# Requests a client puts in one call to a shard, and calls it keeps in flight per shard.
# Fewer calls in flight make bigger batches (when calls were Ray calls, IngestStream on 2
# cores acked 1.6k/s with 4, 2.1k/s with 2); over the data plane a call is cheap, and 2 or 4
# measured the same at 1,000 decisions/s.
CLIENT_BATCH_LIMIT = integer("CLIENT_BATCH_LIMIT", 512)
CLIENT_INFLIGHT_CALLS = integer("CLIENT_INFLIGHT_CALLS", 2)
# Under load (a call to the shard in flight), how long a call waits for more requests before
# it goes; at low load calls go at once.
CLIENT_BATCH_WINDOW_S = number("CLIENT_BATCH_WINDOW_S", 0.001, high=1.0)
# Requests a client lets wait for one shard while its calls are in flight; past it, Busy. Those
# waiting for partitions a move not settled holds count apart, against as many of their own.
CLIENT_QUEUE_LIMIT = integer("CLIENT_QUEUE_LIMIT", 10_000)
# A batch whose shard cannot be reached (no connection opens: its node left, it is
# restarting) never left, so its requests wait up to this long for the map to name a new
# owner (the controller replacing the shard) or for the shard to come back, then go again;
# so do requests whose owner answers MOVED naming no newer map than they were routed by (it
# is frozen behind a move a shard did not settle: control/moves.py). After CLIENT_REROUTES
# such waits they fail Unavailable.
CLIENT_REROUTE_S = number("CLIENT_REROUTE_S", 5.0, above=True, high=600.0)
CLIENT_REROUTES = integer("CLIENT_REROUTES", 2, high=100)

# -- gateways ----------------------------------------------------------------------------------
# The first gateway's port (`kairos up` gives the gateway on node i this + i); 0: any free port.
GATEWAY_PORT = integer("GATEWAY_PORT", 50051, low=0, high=65535)
# Deadline for calls that come without one.
DEFAULT_DEADLINE_S = number("DEFAULT_DEADLINE_S", 5.0, above=True)
# Time kept back from the caller's deadline to build and send a fallback: at least this, and
# at least DEADLINE_MARGIN_SHARE of the deadline (a loaded event loop is late by milliseconds).
DEADLINE_MARGIN_S = number("DEADLINE_MARGIN_S", 0.002)
DEADLINE_MARGIN_SHARE = number("DEADLINE_MARGIN_SHARE", 0.05, high=0.5)
# How far a shard's clock may run ahead of a gateway's: a shard skips a Decide only this long
# past the wall-clock time its gateway stopped waiting (protocol.Decide's `expires`), so a
# clock that far ahead never turns Decides answered in time into fallbacks.
SHARD_CLOCK_SKEW_S = number("SHARD_CLOCK_SKEW_S", 0.1, high=60.0)
# Calls one gateway works on at once; past it, RESOURCE_EXHAUSTED at once.
GATEWAY_INFLIGHT_LIMIT = integer("GATEWAY_INFLIGHT_LIMIT", 20_000)
# Past this share of that limit in flight (T), an API key holding calls may hold its share of
# the kept line, T + (limit - T) / 2 (split among the keys with calls in flight, at least
# GATEWAY_KEY_FLOOR: a key alone reaches the line), and one holding none gets a call or batch in;
# the room past the kept line is kept for keys within the floor, and its last eighth for keys
# holding none, one call each, so that floods of one key or many still let every other key in.
# 1 turns shares off; a gateway with one key or none has none (its caller may take the limit).
GATEWAY_KEY_SHARE_FROM = number("GATEWAY_KEY_SHARE_FROM", 0.75, above=True, high=1.0)


def key_floor_most(limit: int) -> int:
    """The most GATEWAY_KEY_FLOOR may be at `limit` (at least 1): 1/16 of the room past the
    kept line, so that keys within the floor cannot fill it before 16 of them are in."""
    fair = int(limit * GATEWAY_KEY_SHARE_FROM)
    return max(1, (limit - fair - (limit - fair) // 2) // 16)


# ... the calls any key may hold past T, however many share it; one set above key_floor_most of
# the limit is refused (the default is held to it), but not with shares off: no floor is used.
GATEWAY_KEY_FLOOR = integer(
    "GATEWAY_KEY_FLOOR", 64,
    high=math.inf if GATEWAY_KEY_SHARE_FROM == 1 else key_floor_most(GATEWAY_INFLIGHT_LIMIT),
    high_of="GATEWAY_INFLIGHT_LIMIT and KAIROS_GATEWAY_KEY_SHARE_FROM: a sixteenth of the room "
            "above the kept line")
# Load shedding (gateway/admission.py): the queueing delay a gateway keeps its calls near by
# refusing a share of new ones, and how often it adjusts that share (RFC 8033's 15 ms).
SHED_TARGET_S = number("SHED_TARGET_S", 0.015, above=True, high=60.0)
SHED_UPDATE_S = number("SHED_UPDATE_S", 0.015, above=True, high=1.0)
# ... and how often while nothing is shed and the loop is far from late or busy: each update
# wakes the loop (about 11 ms of CPU a second at 15 ms), which an idle gateway, or a shard's
# endpoint that sheds on lag alone, need not pay; an overload is seen within this time (after
# a second with no call the shedder waits for one, and this time runs from it: admission.py).
SHED_IDLE_UPDATE_S = number("SHED_IDLE_UPDATE_S", 0.1, above=True, high=1.0)
# ... and the share of the time a gateway's event loop may want a CPU (running, or waiting for
# a core) before it sheds; 1 turns that signal off.
SHED_BUSY = number("SHED_BUSY", 0.8, above=True, high=1.0)
# The longest a gateway's catalog compile (ValidateCatalog, PutCatalog) runs before it is
# stopped: one at a time, so a slow one would hold the others, deploys included.
CATALOG_COMPILE_S = number("CATALOG_COMPILE_S", 60.0, above=True, high=3600.0)
# Connections a gateway holds at once (past it, a new one is closed as it comes: its client's
# call fails UNAVAILABLE and is retried); keep it under the process's open-file limit. Anyone
# who reaches the port may open one before any key is asked for.
GATEWAY_CONNECTIONS = integer("GATEWAY_CONNECTIONS", 8192)
# ... and how long one may carry no call before the gateway closes it (HTTP/2 GOAWAY: a client
# connects again for its next call), so idle or half-open connections do not pile up.
GATEWAY_CONNECTION_IDLE_S = number("GATEWAY_CONNECTION_IDLE_S", 300.0, above=True)
# Largest request a gateway accepts (bytes), of any method, each message of a stream's too;
# larger ones fail with RESOURCE_EXHAUSTED before decoding (a PutCatalog's catalog and evidence
# included: raise it on the gateways for catalogs past about 1 MiB).
MAX_MESSAGE_BYTES = integer("MAX_MESSAGE_BYTES", 1 << 20, low=1024)
# Largest answer an IngestBatch may have (bytes). A gRPC client receives at most 4 MiB unless it
# raises its limit, and fails a larger answer RESOURCE_EXHAUSTED, which tells it to retry,
# though the call was served: an IngestBatch whose answer could pass this is refused before
# any of its events is routed (cluster/gateway/answerbound.py). 64 KiB under 4 MiB, for what its
# bound cannot see (a shard deciding by a catalog the gateway has not compiled yet). Raise it
# only once every client's receive limit is raised past it.
MAX_ANSWER_BYTES = integer("MAX_ANSWER_BYTES", (4 << 20) - (64 << 10), low=1 << 20,
                           high=(1 << 31) - 1)
# Decisions a watch stream of one customer may have left unread when a shard's push call comes;
# past it the oldest are dropped and the stream ends RESOURCE_EXHAUSTED, saying how many it
# missed. The call itself does not count (it is kept whole): a stream ends for being slow, not
# for a shard's large call.
WATCH_BACKLOG = integer("WATCH_BACKLOG", 1024)
# ... of a channel's watch (every customer's decisions on it, so bursts are large). The kept
# decisions are shared by all the watch's streams: at most this many per watched view, and one
# push call's (about 1-2 KiB each: 16,384 is 16-32 MiB a view).
CHANNEL_WATCH_BACKLOG = integer("CHANNEL_WATCH_BACKLOG", 16_384)
# WatchDecisions streams a gateway serves at once; past it, new ones are RESOURCE_EXHAUSTED.
WATCH_STREAMS = integer("WATCH_STREAMS", 10_000)
# ... of them one API key may hold, and one host (an IPv4 address or an IPv6 /64; behind a
# proxy, a sidecar or SNAT every client is the one host they leave from): so one caller cannot
# take every place.
WATCH_STREAMS_PER_KEY = integer("WATCH_STREAMS_PER_KEY", max(1, WATCH_STREAMS // 4),
                                high=WATCH_STREAMS, high_of="WATCH_STREAMS")
WATCH_STREAMS_PER_HOST = integer("WATCH_STREAMS_PER_HOST", max(1, WATCH_STREAMS // 4),
                                 high=WATCH_STREAMS, high_of="WATCH_STREAMS")
# Streams of each method open without a key (health's Watch, reflection's) a gateway serves
# from one host (an IPv4 address or an IPv6 /64) at once: a client channel's health check
# holds one. Behind a proxy, a sidecar or SNAT every client is the one host they leave from.
OPEN_STREAMS_PER_HOST = integer("OPEN_STREAMS_PER_HOST", 128)
# Events of one IngestStream in flight at once.
STREAM_WINDOW = integer("STREAM_WINDOW", 1024)
# IngestStreams a gateway serves at once (each holds tasks and up to STREAM_WINDOW events), and
# of them one API key and one host (as for the watch streams); past any, RESOURCE_EXHAUSTED.
# Every client behind one L7 proxy, NAT or sidecar is one host: a fleet of relays behind an
# ingress shares _PER_HOST, so raise it (up to INGEST_STREAMS) for such a deployment.
INGEST_STREAMS = integer("INGEST_STREAMS", 4096)
INGEST_STREAMS_PER_KEY = integer("INGEST_STREAMS_PER_KEY", max(1, INGEST_STREAMS // 4),
                                 high=INGEST_STREAMS, high_of="INGEST_STREAMS")
INGEST_STREAMS_PER_HOST = integer("INGEST_STREAMS_PER_HOST", max(1, INGEST_STREAMS // 4),
                                  high=INGEST_STREAMS, high_of="INGEST_STREAMS")
# How long an IngestStream may wait for its caller's next event before the gateway ends it
# (DEADLINE_EXCEEDED, its events acked), so forgotten streams do not hold their places; and how
# long, once its caller sends no more, an ack's write may wait on its reads (RESOURCE_EXHAUSTED).
INGEST_STREAM_IDLE_S = number("INGEST_STREAM_IDLE_S", 600.0, above=True)
# How long an IngestStream's caller may keep its whole window (STREAM_WINDOW events) unacked,
# an ack's write held by flow control, before the gateway ends the stream (RESOURCE_EXHAUSTED):
# its window of events is not held for a caller that stopped reading. Flow control hands acks on
# as the caller's reads free its HTTP/2 window, some 30 KB at a time; a caller with fewer events
# unacked is not timed by this.
INGEST_STREAM_STALL_S = number("INGEST_STREAM_STALL_S", 30.0, above=True)
# ... which is at most INGEST_STREAM_IDLE_S: a caller holding its whole window unacked (the most
# a stream holds) would otherwise be cut later than one that holds less, or sends nothing.
if INGEST_STREAM_IDLE_S < INGEST_STREAM_STALL_S:
    raise ValueError(f"{PREFIX}INGEST_STREAM_IDLE_S ({INGEST_STREAM_IDLE_S:g}) must be at least "
                     f"{PREFIX}INGEST_STREAM_STALL_S ({INGEST_STREAM_STALL_S:g})")
# How often a gateway looks whether to freeze its long-lived objects (pauses.py).
PAUSES_CHECK_S = number("PAUSES_CHECK_S", 1.0, above=True, high=3600.0)
# How long a forgotten customer's links stay refused (a late step of a link that began before
# the forget must not re-create it), and how many such tombstones a partition keeps at most.
TOMBSTONE_S = number("TOMBSTONE_S", 7 * 86400.0, above=True)
TOMBSTONES_PER_PARTITION = integer("TOMBSTONES_PER_PARTITION", 4096)
# How long after a link's first Claim its customer's shard holds back (RESOURCE_EXHAUSTED: retry)
# the events and outcomes that reach the customer by way of the alias being linked, until the
# link's Merge brings the visitor's idempotency keys (cluster/shard/linkhold.py). A link takes
# a few round trips; this bounds the hold of one whose caller gave up between its steps.
LINK_HOLD_S = number("LINK_HOLD_S", 30.0, above=True, high=3600.0)
# How many times a link retried once its claim's hold has ended (its first try cut after its
# Claim, retried later, as callers are told to) has the claim hold again, from the retry: so
# that the retried link's steps are held too, while no caller holds the alias's requests more
# than (1 + this) * LINK_HOLD_S by retrying or repeating a link (0: a claim holds once).
LINK_HOLD_RENEWALS = integer("LINK_HOLD_RENEWALS", 2, low=0, high=100)
