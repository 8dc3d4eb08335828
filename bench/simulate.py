"""Simulator: synthetic customers with a known truth, closed loop through a real Kairos.

    python -m bench.simulate            # 2,000 customers, 30,000 decisions (a few minutes)
    python -m bench.simulate --quick    # 1,000 customers, 3,000 decisions; the suite runs it

The world (bench/world.py) hides each action's true acceptance, logistic in the customers'
profile features and the decision's context. The simulator starts a Kairos of its own on this
machine (a private Ray, a directory store, `--shards` shards, the learner, one gateway that
requires API keys), sends every customer's profile as a CRM would (IngestBatch, the CRM's key),
then runs `--concurrency` closed-loop sessions through the gateway: Decide on web or the app
with the device in the context (the channel's key), then Respond for the action shown with an
outcome drawn from the truth (a convert carrying the action's value, or a reject). The models
learn online on the shards, and the learner merges their deltas and publishes versions.

Mid-run the world changes twice: at DRIFT_AT of the decisions the truth of two actions moves
(nothing tells Kairos), and at LAUNCH_AT the simulator pushes the next catalog version, with a
new action, through AdminService.PutCatalog while the sessions go on (the ops key).
`--control` of each channel's decisions is held back (channels.<name>.control).

What is measured (bench/simreport.py): regret against the oracle per window of decisions; how
many impressions the new action needs to reach its true rank; how long a published model
version takes to reach every shard (from the learner's and the shards' own clocks, which
GetClusterStatus's source, the controller's status, reports); the models' uplift over the
control group; and the truth a replay of the run's decision log is checked against
(bench/simtruth.py).

Writes bench/results/simulate-<time>.json, .md, .png, -candidate.yaml and -truth.jsonl.gz,
and prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import ray
import yaml

from kairos.cluster.cli.logexport import exported
from kairos.cluster.cli.remote import Remote
from kairos.cluster.control import runtime
from kairos.cluster.gateway.auth import METADATA_KEY
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from . import simreport, simtruth
from .systems import kairos, ray_nodes
from .world import (ACTIONS, CHANNELS, LAUNCH_VERSION, MOBILE_SHARE, WEB_SHARE, WORLD,
                    Population, acceptance, customer_id, running_catalogs)

RESULTS = Path(__file__).parent / "results"
DRIFT_AT = 0.35  # share of the run's decisions after which the truth has drifted
LAUNCH_AT = 0.6  # share of the run's decisions at which the new catalog version is pushed
POLL_S = 1.0  # how often the model versions are read (the shards keep their last 64)
CALL_TIMEOUT_S = 10.0
# A Decide the gateway sheds (RESOURCE_EXHAUSTED: at capacity; the closed loop drives it as
# fast as it answers) is sent again after a jittered backoff from the first to the last of
# these, doubling, as a client that respects the refusal does.
SHED_BACKOFF_S, LAST_SHED_BACKOFF_S = 0.01, 0.64
PROFILES_PER_BATCH = 1000


@dataclass(frozen=True)
class Plan:
    customers: int
    decisions: int
    shards: int
    concurrency: int  # sessions in flight
    control: float  # share of each channel's decisions held back
    windows: int  # the regret curve's points
    seed: int = 1


FULL = Plan(customers=2000, decisions=30_000, shards=2, concurrency=32, control=0.1, windows=40)
# 8 sessions, not 16: on 2 shared cores 16 overload the gateway, which shed 5,362 Decides and
# failed 124 in a quick run of 39 s of sessions; 8 shed 1,014 and failed 1 in 18 s
QUICK = Plan(customers=1000, decisions=3000, shards=2, concurrency=8, control=0.1, windows=12)


@dataclass
class Decisions:
    """One row per decision the sessions made, in the order they were answered (columns)."""

    t: list[float] = field(default_factory=list)  # seconds since the sessions began
    customer: list[int] = field(default_factory=list)
    web: list[bool] = field(default_factory=list)
    mobile: list[bool] = field(default_factory=list)
    drifted: list[bool] = field(default_factory=list)
    launched: list[bool] = field(default_factory=list)  # decided on the launch's catalog
    shown: list[int] = field(default_factory=list)  # index into ACTIONS; -1: nothing
    control: list[bool] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)
    decision_id: list[str] = field(default_factory=list)


@dataclass
class Counts:
    decided: int = 0
    fallbacks: int = 0  # the gateway answered the catalog's fallback (a shard was late)
    empty: int = 0  # decisions that showed nothing
    decide_errors: int = 0
    decides_shed: int = 0  # refused as overload and sent again
    outcomes: int = 0
    outcomes_refused: int = 0  # RESOURCE_EXHAUSTED: the customer's outcome rate
    respond_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "<call> <status code>": count
    examples: dict[str, str] = field(default_factory=dict)  # the first one's details

    def failed(self, call: str, exc: grpc.aio.AioRpcError) -> None:
        key = f"{call} {exc.code().name}"
        self.errors[key] = self.errors.get(key, 0) + 1
        self.examples.setdefault(key, str(exc.details())[:300])


class Keys:
    """The gateway's API keys, one per caller: the CRM, each channel, the operators."""

    def __init__(self):
        self.crm, self.ops = secrets.token_hex(16), secrets.token_hex(16)
        self.channel = {ch: secrets.token_hex(16) for ch in CHANNELS}

    def write(self, folder: str) -> str:
        entries = [{"key": self.crm, "name": "crm", "scopes": ["ingest"]},
                   {"key": self.ops, "name": "ops", "scopes": ["admin"]}]
        entries += [{"key": key, "name": f"{ch}-frontend", "channel": ch,
                     "scopes": ["decide", "respond"]} for ch, key in self.channel.items()]
        path = os.path.join(folder, "keys.yaml")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            yaml.safe_dump({"keys": entries}, f)
        return path


class Sessions:
    """The closed loop: `concurrency` sessions through the gateway, each deciding, drawing
    the outcome from the truth and reporting it, until the plan's decisions are made; the
    launch's catalog goes out when its turn comes."""

    def __init__(self, target: str, keys: Keys, population: Population, plan: Plan,
                 launch_catalog: str):
        self.keys = keys
        self.population = population
        self.plan = plan
        self.launch_catalog = launch_catalog
        self.channel = grpc.aio.insecure_channel(target)  # within the running event loop
        self.decisions = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.rng = random.Random(plan.seed)
        self._jitter = random.Random(plan.seed + 1)  # backoffs: the world's draws stay as seeded
        self.rows = Decisions()
        self.counts = Counts()
        self.taken = 0
        self.drift_index = int(DRIFT_AT * plan.decisions)
        self.launch_index = int(LAUNCH_AT * plan.decisions)
        self.launch: dict[str, float] = {}
        self._launching: asyncio.Task | None = None
        self._started = 0.0

    async def send_profiles(self) -> float:
        """Every customer's profile event, in batches (the CRM's bulk sync); seconds taken."""
        started = time.perf_counter()
        for first in range(0, len(self.population), PROFILES_PER_BATCH):
            batch = pb.EventBatch(events=[
                pb.Event(customer_id=customer_id(i), type="profile",
                         attributes={k: _value(v) for k, v in self.population.profile(i).items()})
                for i in range(first, min(first + PROFILES_PER_BATCH, len(self.population)))])
            await self.decisions.IngestBatch(batch, timeout=60.0,
                                             metadata=((METADATA_KEY, self.keys.crm),))
        return time.perf_counter() - started

    async def run(self) -> float:
        """The sessions, until the plan's decisions are made; seconds taken."""
        self._started = time.monotonic()
        await asyncio.gather(*(self._session() for _ in range(self.plan.concurrency)))
        if self._launching is not None:
            await self._launching
        return time.monotonic() - self._started

    async def close(self) -> None:
        await self.channel.close()

    async def _session(self) -> None:
        while self.taken < self.plan.decisions:
            index = self.taken
            self.taken += 1
            if index == self.launch_index:
                self._launching = asyncio.ensure_future(self._launch())
            await self._visit(index >= self.drift_index)

    async def _launch(self) -> None:
        """The next catalog version, with the new action, while the sessions go on (times
        since the sessions began, and epoch seconds to place the learner's publishes)."""
        self.launch.update(sent_s=time.monotonic() - self._started, sent_at=time.time())
        info = await self.admin.PutCatalog(admin_pb2.CatalogText(yaml=self.launch_catalog),
                                           timeout=120.0,
                                           metadata=((METADATA_KEY, self.keys.ops),))
        self.launch.update(switched_s=time.monotonic() - self._started,
                           switched_at=time.time(), version=info.version)

    async def _visit(self, drifted: bool) -> None:
        rng = self.rng
        i = rng.randrange(len(self.population))
        web, mobile = rng.random() < WEB_SHARE, rng.random() < MOBILE_SHARE
        channel = "web" if web else "app"
        key = ((METADATA_KEY, self.keys.channel[channel]),)
        request = pb.DecideRequest(customer_id=customer_id(i), channel=channel,
                                   context={"device": _value("mobile" if mobile
                                                             else "desktop")})
        decision = await self._decide(request, key)
        if decision is None:
            return
        self.counts.decided += 1
        if decision.fallback:
            self.counts.fallbacks += 1
            return  # nothing the models chose: no row (the report counts them)
        shown, accepted = -1, False
        if decision.actions:
            action = decision.actions[0].action_id
            shown = ACTIONS.index(action)
            accepted = rng.random() < acceptance(action, self.population, i, web, mobile,
                                                 drifted)
        else:
            self.counts.empty += 1
        r = self.rows
        r.t.append(time.monotonic() - self._started)
        r.customer.append(i)
        r.web.append(web)
        r.mobile.append(mobile)
        r.drifted.append(drifted)
        r.launched.append(decision.catalog_version == LAUNCH_VERSION)
        r.shown.append(shown)
        r.control.append(decision.control)
        r.accepted.append(accepted)
        r.decision_id.append(decision.decision_id)
        if shown >= 0:
            await self._respond(decision, action, channel, accepted, key)

    async def _decide(self, request: pb.DecideRequest, key: tuple) -> pb.Decision | None:
        """The visit's decision, sent again while the gateway sheds it (see SHED_BACKOFF_S);
        None after any other error (counted)."""
        backoff = SHED_BACKOFF_S
        while True:
            try:
                return await self.decisions.Decide(request, timeout=CALL_TIMEOUT_S,
                                                   metadata=key)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED \
                        or backoff > LAST_SHED_BACKOFF_S:
                    self.counts.decide_errors += 1
                    self.counts.failed("Decide", exc)
                    return None
            self.counts.decides_shed += 1
            await asyncio.sleep(backoff * (0.5 + self._jitter.random()))
            backoff *= 2

    async def _respond(self, decision: pb.Decision, action: str, channel: str, accepted: bool,
                       key: tuple) -> None:
        outcome = pb.Outcome(decision_id=decision.decision_id, customer_id=decision.customer_id,
                             action_id=action, channel=channel,
                             outcome=pb.CONVERT if accepted else pb.REJECT)
        if accepted:
            outcome.value = WORLD[action].value
        try:
            await self.decisions.Respond(outcome, timeout=CALL_TIMEOUT_S, metadata=key)
            self.counts.outcomes += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.counts.outcomes_refused += 1
            else:
                self.counts.respond_errors += 1
                self.counts.failed("Respond", exc)


def _value(v: Any) -> pb.Value:
    if isinstance(v, str):
        return pb.Value(string_value=v)
    return pb.Value(number_value=float(v))


class VersionWatch(threading.Thread):
    """Reads, every POLL_S, the learner's latest publishes and each shard's latest adoptions
    (model version, epoch seconds) from the controller's status, the source of
    GetClusterStatus; keeps every one seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.publishes: dict[int, float] = {}
        self.adoptions: dict[str, dict[int, float]] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.read()
            if self._done.wait(POLL_S):
                return

    def read(self) -> None:
        status = ray.get(runtime.controller().status.remote(), timeout=30)
        self.publishes.update(dict(status["learner"].get("publishes", [])))
        for shard in status["shards"]:
            self.adoptions.setdefault(shard["shard"], {}).update(
                dict(shard.get("model_adoptions", [])))

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.read()


def simulate(plan: Plan) -> dict[str, Any]:
    """One run: the world, a Kairos of its own, the sessions; what they measured."""
    population = Population.draw(plan.customers, plan.seed)
    first, launch = running_catalogs(plan.control)
    keys = Keys()
    private = tempfile.mkdtemp(prefix="kairos-sim-")
    watch = VersionWatch()
    try:
        with ray_nodes(1), kairos(plan.shards, plan.customers, catalog_text=first,
                                  keys_file=keys.write(private)) as system:
            began = time.time()
            try:
                sessions, profiles_s, seconds = asyncio.run(
                    _drive(system.target, keys, population, plan, launch, watch))
                time.sleep(POLL_S * 2)  # the last publishes reach every shard within two syncs
            finally:
                if watch.is_alive():
                    watch.stop()  # before Ray goes
            # the run's decision log, as `kairos log export` writes it, before the store goes
            log = list(exported(Remote(system.target, keys.ops), began - 60, time.time() + 60))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return {"plan": asdict(plan), "population": population, "rows": sessions.rows,
            "counts": asdict(sessions.counts), "launch": sessions.launch,
            "drift_index": sessions.drift_index, "launch_index": sessions.launch_index,
            "profiles_s": round(profiles_s, 2), "seconds": round(seconds, 1),
            "publishes": watch.publishes, "adoptions": watch.adoptions, "log": log}


async def _drive(target: str, keys: Keys, population: Population, plan: Plan, launch: str,
                 watch: VersionWatch) -> tuple[Sessions, float, float]:
    """Profiles, then the sessions (the version watch runs meanwhile); the sessions, and the
    seconds each part took."""
    sessions = Sessions(target, keys, population, plan, launch)
    try:
        profiles_s = await sessions.send_profiles()
        watch.start()
        seconds = await sessions.run()
    finally:
        await sessions.close()
    return sessions, profiles_s, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 customers, 3,000 decisions (about a minute)")
    parser.add_argument("--customers", type=int)
    parser.add_argument("--decisions", type=int)
    parser.add_argument("--shards", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--control", type=float, help="share held back, 0 to 0.5")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = {k: getattr(args, k) for k in ("customers", "decisions", "shards", "concurrency",
                                             "control", "seed") if getattr(args, k) is not None}
    plan = Plan(**{**asdict(plan), **chosen})
    if plan.shards < 2:
        parser.error("--shards: at least 2 (the learner merges what several shards learn)")
    if not 0.0 <= plan.control <= 0.5:
        parser.error("--control: a share from 0 to 0.5")
    if plan.decisions < 10 * plan.windows:
        parser.error(f"--decisions: at least {10 * plan.windows}")
    if plan.customers < 1 or plan.concurrency < 1:
        parser.error("--customers and --concurrency: at least 1")
    command = " ".join(["python -m bench.simulate"] + (sys.argv[1:] if argv is None else argv))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run = simulate(plan)
    truth = simtruth.Truth.of_run(run)
    results = simreport.results(run, truth, f"simulate-{stamp}", command)
    results["replay_check"] = simtruth.replay_check(run["log"], truth)
    base = simreport.save(results, args.out)
    truth.write(base)
    print(json.dumps(simreport.summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
