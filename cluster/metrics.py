"""Prometheus metrics of the runtime, through ray.util.metrics (Ray exports them per node).

Tagged by shard, channel, action group or request kind, never by customer: a label per
customer would make one time series per person.
"""
from __future__ import annotations

import math
from collections import Counter as Tally
from time import monotonic
from typing import TYPE_CHECKING, Iterable

import ray
from ray.util.metrics import Counter, Gauge, Histogram

from kairos.cluster.shard.context import LEARNED_COUNT

if TYPE_CHECKING:
    from kairos.cluster.gateway.admission import Shedder

LATENCY_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 200, 500, 1000]


def gauge_refresh_s(report_interval_ms: float) -> float:
    """How often a shard sets its gauges that did not change: half Ray's export interval.
    Ray (2.60, through OpenTelemetry) exports a process's gauge only if it was set since its
    last export, one every metrics_report_interval_ms (10 s by default, at least 1 s), and the
    node's metrics agent drops a series not exported for two of them: set this often (in
    practice at the next flush, METRICS_FLUSH_S), an idle shard's gauges stay in Prometheus."""
    return max(report_interval_ms, 1000.0) / 2000.0


def _report_interval_ms() -> float:
    """Ray's metrics_report_interval_ms as the cluster runs it (`ray.init`'s _system_config,
    or the RAY_metrics_report_interval_ms variable: a worker reads the cluster's); Ray's
    default, 10 s, should its private `_config` move in a later Ray."""
    try:
        return float(ray._config.metrics_report_interval_ms())
    except AttributeError:
        return 10_000.0


class ShardMetrics:
    """What a shard reports; counters are flushed from the shard's own tallies."""

    def __init__(self, shard: str):
        self.tags = {"shard": shard}
        self.latency = Histogram(
            "kairos_request_latency_ms", "Time from a batch's arrival at a shard to its answer, "
            "queueing included, by request kind (event, decide, outcome, ...)",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("shard", "kind"))
        self.events = Counter("kairos_events_total", "Events applied (timer events included)",
                              tag_keys=("shard",))
        self.decisions = Counter("kairos_decisions_total", "Decisions made, by channel",
                                 tag_keys=("shard", "channel"))
        self.chosen = Counter("kairos_actions_chosen_total", "Actions in decisions, by group",
                              tag_keys=("shard", "group"))
        self.nba_changes = Counter("kairos_nba_changes_total", "Watched best actions that "
                                   "changed and were pushed", tag_keys=("shard",))
        self.passivations = Counter("kairos_passivations_total", "Customers passivated",
                                    tag_keys=("shard",))
        self.timers_fired = Counter("kairos_timers_fired_total", "Customer timers fired",
                                    tag_keys=("shard",))
        self.rejected = Counter("kairos_rejected_total", "Requests rejected because the "
                                "shard's queue was full or it held as many customers as "
                                "it may (CROWDED)", tag_keys=("shard",))
        self.queue = Gauge("kairos_queue_depth", "Requests admitted, not yet processed",
                           tag_keys=("shard",))
        self.resident = Gauge("kairos_resident_customers", "Customers in memory",
                              tag_keys=("shard",))
        self.model_version = Gauge("kairos_model_version", "Model version in use",
                                   tag_keys=("shard",))
        self.snapshots = Counter("kairos_snapshots_total", "Partition snapshots written",
                                 tag_keys=("shard",))
        self.recoveries = Counter("kairos_recoveries_total", "Times the shard rebuilt its "
                                  "partitions from the store (start, restart, store failure)",
                                  tag_keys=("shard",))
        self.recovery_s = Gauge("kairos_recovery_seconds", "How long the last recovery from "
                                "the store took", tag_keys=("shard",))
        self.unsnapshotted = Gauge("kairos_unsnapshotted_partitions", "Partitions with changes "
                                   "only in the journal (recovery replays them)",
                                   tag_keys=("shard",))
        self.model_updates_refused = Counter(
            "kairos_model_updates_refused_total", "Model updates (outcomes, or rows of a "
            "published version) refused because they would leave a model not finite or not sound "
            "(counts or a precision taken back, a precision not positive definite)",
            tag_keys=("shard",))
        self.values_clipped = Counter(
            "kairos_values_clipped_total", "Conversion values taught at most models.value."
            "max_ratio times the action's catalog value when its decision was made",
            tag_keys=("shard",))
        self.values_unbounded = Counter(
            "kairos_values_unbounded_total", "Conversion values not taught: no decision was "
            "named or remembered to bound them, or the action was not shown or worth nothing",
            tag_keys=("shard",))
        self.strings_overflowed = Counter(
            "kairos_strings_overflowed_total", "Strings of events and loaded profiles stored "
            "as '<other>': the shard's string table was full of strings its resident profiles "
            "hold (the log names the fields that hold the most)", tag_keys=("shard",))
        self.string_compaction_s = Counter(
            "kairos_string_compaction_seconds_total", "Time the shard's loop spent freeing the "
            "codes of strings no resident profile holds (requests wait for it; a shard's stats "
            "give the passes as string_compactions)", tag_keys=("shard",))
        self.learned = Counter(
            "kairos_outcomes_learned_total", "Outcomes recorded, by what the models learned "
            "from: decision (the inputs the decision saw), profile_no_decision (offline "
            "feedback), profile_decision_forgotten (the decision's inputs were no longer kept; "
            "both learn from the profile as it is now, without context), nothing (impressions)",
            tag_keys=("shard", "learned_from"))
        self._sent: Tally = Tally()
        self._gauged: tuple[float, ...] = ()  # the gauges' values as last set
        self._refresh_s = gauge_refresh_s(_report_interval_ms())
        self._gauged_at = -math.inf

    def observe_batch(self, kinds: Iterable[str], latency_ms: float) -> None:
        for kind in set(kinds):
            self.latency.observe(latency_ms, {**self.tags, "kind": kind})

    def restart_tallies(self) -> None:
        """The shard was rebuilt from the store: its tallies start again from zero (the
        actor's own, such as rejections, go on)."""
        self._sent = Tally({"rejected": self._sent["rejected"]})

    def flush(self, counts: Tally, by_channel: Tally, by_group: Tally, queue: int,
              resident: int, model_version: int, recovery_s: float, unsnapshotted: int
              ) -> None:
        """Report what the tallies gained since the last flush, and the gauges when one
        changed or `gauge_refresh_s` after they were last set: an idle shard's flush sends
        nothing most of the time."""
        for name, metric in (("events", self.events), ("nba_changes", self.nba_changes),
                             ("passivations", self.passivations),
                             ("timers_fired", self.timers_fired), ("rejected", self.rejected),
                             ("snapshots", self.snapshots), ("recoveries", self.recoveries),
                             ("model_updates_refused", self.model_updates_refused),
                             ("values_clipped", self.values_clipped),
                             ("values_unbounded", self.values_unbounded),
                             ("strings_overflowed", self.strings_overflowed),
                             ("string_compaction_s", self.string_compaction_s)):
            self._inc(metric, name, counts[name], self.tags)
        for name, n in counts.items():
            if name.startswith(LEARNED_COUNT):
                self._inc(self.learned, name, n,
                          {**self.tags, "learned_from": name[len(LEARNED_COUNT):]})
        for channel, n in by_channel.items():
            self._inc(self.decisions, ("channel", channel), n, {**self.tags, "channel": channel})
        for group, n in by_group.items():
            self._inc(self.chosen, ("group", group), n, {**self.tags, "group": group})
        gauged, now = (queue, resident, model_version, recovery_s, unsnapshotted), monotonic()
        if gauged != self._gauged or now - self._gauged_at >= self._refresh_s:
            for gauge, value in zip((self.queue, self.resident, self.model_version,
                                     self.recovery_s, self.unsnapshotted), gauged):
                gauge.set(value, self.tags)
            self._gauged, self._gauged_at = gauged, now

    def _inc(self, metric: Counter, key, total: int, tags: dict) -> None:
        gained = total - self._sent[key]
        if gained > 0:
            metric.inc(gained, tags)
            self._sent[key] = total


class GatewayMetrics:
    """What a gateway reports: the fallback decisions it answered (the shard did not answer
    within the caller's deadline, or could not be reached) and the health Watches it refused,
    flushed from their tallies, and its load shedding (gateway/admission.py)."""

    def __init__(self, gateway: str):
        self.tags = {"gateway": gateway}
        self.fallbacks = Counter("kairos_fallbacks_total", "Fallback decisions answered, by "
                                 "reason: deadline (the shard did not answer in time) or "
                                 "unavailable (no shard could be reached)",
                                 tag_keys=("gateway", "reason"))
        self.shed = Counter("kairos_calls_shed_total", "New calls refused with "
                            "RESOURCE_EXHAUSTED because the gateway was overloaded",
                            tag_keys=("gateway",))
        self.shed_share = Gauge("kairos_gateway_shed_share", "Share of new calls the gateway "
                                "refuses now", tag_keys=("gateway",))
        self.loop_busy = Gauge("kairos_gateway_loop_busy", "Share of the time the gateway's "
                               "event loop wanted a CPU (moving average)", tag_keys=("gateway",))
        self.watches_refused = Counter(
            "kairos_health_watches_refused_total", "Health Watches refused past their bound "
            "(gateway/bounds.py), by answer: unimplemented (the client's connection goes "
            "without health checks for its life) or resource_exhausted (the gateway showed "
            "NOT_SERVING)", tag_keys=("gateway", "answer"))
        self._sent: Tally = Tally()
        self._watches_sent: Tally = Tally()
        self._shed_sent = 0

    def flush(self, fallbacks: Tally, shedder: Shedder, watches_refused: Tally) -> None:
        self._flush_tally(self.fallbacks, fallbacks, self._sent, "reason")
        self._flush_tally(self.watches_refused, watches_refused, self._watches_sent, "answer")
        if shedder.refused > self._shed_sent:
            self.shed.inc(shedder.refused - self._shed_sent, self.tags)
            self._shed_sent = shedder.refused
        self.shed_share.set(shedder.shed_share, self.tags)
        self.loop_busy.set(shedder.busy, self.tags)

    def _flush_tally(self, counter: Counter, tally: Tally, sent: Tally, tag: str) -> None:
        """Add to `counter` what each of `tally`'s totals grew by since `sent` last saw it."""
        for key, total in tally.items():
            if total > sent[key]:
                counter.inc(total - sent[key], {**self.tags, tag: key})
                sent[key] = total


class LearnerMetrics:
    """What the learner reports."""

    def __init__(self) -> None:
        self.refused = Counter("kairos_model_rows_refused_total", "Models in shards' deltas or "
                               "in the saved posterior refused for not being finite")
        self.dropped = Counter("kairos_model_deltas_dropped_total", "Shards' deltas of a "
                               "catalog the learner cannot map onto the one it runs, dropped")
        self.repeated = Counter("kairos_model_deltas_repeated_total", "Shards' deltas sent "
                                "again that the learner had merged: answered, not merged again")
        self.unconfirmed = Counter("kairos_model_syncs_refused_unconfirmed_total", "Shards' "
                                   "syncs refused while the learner was not told the cluster's "
                                   "catalog (Ray restarted it): learning waits in the shards")
        self.saves_failed = Counter("kairos_learner_saves_failed_total", "Saves of the "
                                    "learner's posterior the store did not take (periodic, a "
                                    "switch's, a stop's last): until one lands, the merges since "
                                    "the last that did are lost if the learner's process ends")
        self._sent = {"refused": 0, "dropped": 0, "repeated": 0, "unconfirmed": 0,
                      "saves_failed": 0}

    def flush(self, refused: int, dropped: int = 0, repeated: int = 0,
              unconfirmed: int = 0, saves_failed: int = 0) -> None:
        """Report what the learner's totals gained since the last flush."""
        for name, total in (("refused", refused), ("dropped", dropped),
                            ("repeated", repeated), ("unconfirmed", unconfirmed),
                            ("saves_failed", saves_failed)):
            if total > self._sent[name]:
                getattr(self, name).inc(total - self._sent[name])
                self._sent[name] = total
