"""The contract fuzzer: requests generated from the kairos.v1 descriptors against a live Kairos.

    python -m bench.fuzz                          # 10,000 requests against a `kairos up` of
                                                  # its own (private home, ports, Ray temp dir)
    python -m bench.fuzz --requests 500 --smoke   # a short run (the suite runs a smaller one
                                                  # against an in-process gateway)
    python -m bench.fuzz --target HOST:PORT --key KEY   # against a running Kairos (KEY: every
                                                  # scope; the fuzzer writes only fz-* ids)

Every RPC gets valid, boundary and malformed requests (bench/contract.py), sent with keys of
every kind: one with every scope, one bound to a channel, an unknown one and none. It holds
Kairos to the contract:
  - no call ends with INTERNAL or UNKNOWN (bad input is INVALID_ARGUMENT naming the field,
    a refused key UNAUTHENTICATED or PERMISSION_DENIED, and so on);
  - no Kairos process restarted (the Ray actors' processes are the same at the end; known
    only for a Kairos the fuzzer started);
  - every acknowledged event was applied exactly once: the ledger customers' events all carry
    idempotency keys and are retried until answered, and at the end each ledger customer's
    `events_applied` equals the events acknowledged as new, and every duplicate answered the
    sequence number of its key's first application;
  - the cluster still decides afterwards.

Writes bench/results/fuzz-<time>.json and .md (statuses per RPC and mode, the violations
with the request that caused each) and prints a JSON summary as its last line; exits 1 on a
violation.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc
from tqdm import tqdm

from kairos.core.compiler import compiled_from_text
from kairos.v1 import admin_pb2, decision_pb2

from . import report
from .contract import Generator, Method, Request, Vocabulary, message_class, methods

RESULTS = Path(__file__).parent / "results"
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# an answer that leaves open whether an event was applied: a ledger request is sent again
UNSETTLED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)
RETRIES = 8
CALL_TIMEOUT_S = 10.0
WATCH_S = 0.5  # how long a WatchDecisions stream is held before the fuzzer lets it end
# how often each RPC is drawn (the streams and admin calls cost more, and admin mostly fails)
WEIGHTS = {"Decide": 20, "Ingest": 20, "IngestStream": 5, "IngestBatch": 5, "Respond": 12,
           "WatchDecisions": 3, "GetProfile": 8, "LinkIdentity": 6, "ForgetCustomer": 3,
           "PutCatalog": 1, "GetCatalog": 1, "ValidateCatalog": 3, "RollbackCatalog": 1,
           "GetClusterStatus": 2, "ScaleShards": 2}
KEY_KINDS = ("full", "bound", "unknown", "none")
KEY_WEIGHTS = (0.75, 0.1, 0.075, 0.075)


@dataclass
class Keys:
    full: str
    bound: str | None = None  # a web-channel key with decide, ingest, respond, watch

    def metadata(self, kind: str) -> tuple[tuple[str, str], ...]:
        key = {"full": self.full, "bound": self.bound, "unknown": "k-" + secrets.token_hex(8),
               "none": None}[kind]
        return (("x-api-key", key),) if key else ()

    @classmethod
    def fresh(cls) -> "Keys":
        return cls(full="fz-full-" + secrets.token_hex(16), bound="fz-web-" + secrets.token_hex(16))

    def yaml(self) -> str:
        """The keys file a gateway serving the fuzzer reads."""
        return ("keys:\n"
                f"  - {{key: {self.full}, name: fuzz-all, scopes: [decide, ingest, respond, "
                "watch, profile:read, admin, identity]}\n"
                f"  - {{key: {self.bound}, name: fuzz-web, channel: web, "
                "scopes: [decide, ingest, respond, watch]}\n")


@dataclass
class Ledger:
    """What the ledger customers were told: per (customer, key) the sequence of the first
    application, events acknowledged as new, and events never answered."""

    first: dict[tuple[str, str], int] = field(default_factory=dict)
    new: Counter = field(default_factory=Counter)
    unanswered: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def ack(self, customer: str, key: str, sequence: int, duplicate: bool) -> None:
        seen = self.first.get((customer, key))
        if duplicate:
            if seen is not None and seen != sequence:
                self.violations.append(f"{customer} key {key}: duplicate answered sequence "
                                       f"{sequence}, first applied as {seen}")
            return
        if seen is not None:
            self.violations.append(f"{customer} key {key}: applied again as {sequence} "
                                   f"(first as {seen})")
        self.first[(customer, key)] = sequence
        self.new[customer] += 1


@dataclass
class Tally:
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    violations: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # "rpc mode status" -> a detail
    requests: int = 0

    def note(self, request: Request, key_kind: str, code: grpc.StatusCode, detail: str) -> None:
        name = f"{request.method.name} {request.mode}"
        self.statuses[name][code.name] += 1
        self.examples.setdefault(f"{name} {code.name}", detail[:300])
        if code in FORBIDDEN:
            self.violations.append({"rpc": request.method.name, "mode": request.mode,
                                    "key": key_kind, "status": code.name,
                                    "detail": detail[:500],
                                    "request": [p[:200].hex() for p in request.payloads[:3]]})


class Fuzzer:
    def __init__(self, channel: grpc.aio.Channel, streams: grpc.Channel, keys: Keys,
                 vocab: Vocabulary, seed: int):
        self.channel = channel
        self.streams = streams  # a blocking channel, for client-streaming calls
        self.keys = keys
        self.vocab = vocab
        self.generator = Generator(vocab, seed)
        self.rng = self.generator.rng
        self.tally = Tally()
        self.ledger = Ledger()
        self._methods = {m.name: m for m in methods()}
        # a new RPC is fuzzed too, at an average weight
        self._weights = {name: WEIGHTS.get(name, 5) for name in self._methods}

    async def run(self, n: int, concurrency: int, progress: bool = True) -> None:
        names = list(self._weights)
        weights = [self._weights[n] for n in names]
        todo = iter(range(n))
        bar = tqdm(total=n, disable=not progress, unit="req", file=sys.stderr)

        async def worker() -> None:
            for _ in todo:
                method = self._methods[self.rng.choices(names, weights)[0]]
                await self.send(self.generator.request(method))
                bar.update()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        bar.close()

    async def send(self, request: Request) -> None:
        kind = "full" if request.ledger else self.rng.choices(KEY_KINDS, KEY_WEIGHTS)[0]
        if kind == "bound" and not self.keys.bound:
            kind = "full"
        for attempt in range(RETRIES if request.ledger else 1):
            code, detail, answers = await self._call(request, self.keys.metadata(kind))
            self.tally.requests += 1
            self.tally.note(request, kind, code, detail)
            if code not in UNSETTLED or not request.ledger:
                break
            await asyncio.sleep(0.05 * 2 ** attempt)
        if request.ledger:
            self._settle(request, code, answers)
        if code == grpc.StatusCode.OK and request.method.name == "Decide":
            self._remember_decisions(answers)

    async def _call(self, request: Request, metadata) -> tuple[grpc.StatusCode, str, list]:
        """The call's status and its answers (for a stream, those that came before an
        error too)."""
        m = request.method
        out = message_class(m.output).FromString
        answers: list = []
        try:
            if m.client_streaming:
                # grpc's asyncio client reports INTERNAL "Internal error from Core" instead of
                # the server's status when the server ends the stream while the client is
                # still writing (grpc/grpc#36066); its blocking client reports the status
                def stream() -> None:
                    answers.extend(self.streams.stream_stream(m.path, response_deserializer=out)(
                        iter(request.payloads), timeout=CALL_TIMEOUT_S, metadata=metadata))
                await asyncio.to_thread(stream)
            elif m.server_streaming:
                async for answer in self.channel.unary_stream(m.path, response_deserializer=out)(
                        request.payloads[0], timeout=WATCH_S, metadata=metadata):
                    answers.append(answer)
            else:
                answers.append(await self.channel.unary_unary(m.path, response_deserializer=out)(
                    request.payloads[0], timeout=CALL_TIMEOUT_S, metadata=metadata))
        except grpc.RpcError as exc:
            if not (m.server_streaming and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                return exc.code(), exc.details() or "", answers
            # a watch is held for WATCH_S, then let go: that is its success
        return grpc.StatusCode.OK, "", answers

    def _settle(self, request: Request, code: grpc.StatusCode, answers: list) -> None:
        """Note the ledger events' answers. Acks come one per event, in order; after a failed
        stream, the events past the last ack count as never answered (a refused one was not
        applied, but the fuzzer cannot tell it from the ones behind it)."""
        acks = _acks(request.method, answers)
        for position, (customer, key) in self._ledger_positions(request):
            if position < len(acks):
                self.ledger.ack(customer, key, acks[position].sequence, acks[position].duplicate)
            elif code != grpc.StatusCode.INVALID_ARGUMENT or request.method.name != "Ingest":
                self.ledger.unanswered[customer] += 1

    @staticmethod
    def _ledger_positions(request: Request) -> list[tuple[int, tuple[str, str]]]:
        """Where in the call's events each ledger event is."""
        events: list[Any] = []
        for payload in request.payloads:
            if request.method.name == "IngestBatch":
                events.extend(decision_pb2.EventBatch.FromString(payload).events)
            else:
                events.append(decision_pb2.Event.FromString(payload))
        wanted = list(request.ledger)
        found = []
        for position, e in enumerate(events):
            pair = (e.customer_id, e.idempotency_key)
            if wanted and e.WhichOneof("customer") == "customer_id" and pair == wanted[0]:
                found.append((position, wanted.pop(0)))
        return found

    def _remember_decisions(self, answers: list) -> None:
        for decision in answers:
            for action in decision.actions[:1]:
                self.vocab.decisions.append((decision.decision_id, decision.customer_id,
                                             decision.channel, action.action_id))
        del self.vocab.decisions[:-1000]

    async def check_ledger(self) -> list[str]:
        """Each ledger customer's events_applied against what the fuzzer was told."""
        problems = list(self.ledger.violations)
        profile = self.channel.unary_unary(
            "/kairos.v1.DecisionService/GetProfile",
            request_serializer=decision_pb2.ProfileRequest.SerializeToString,
            response_deserializer=decision_pb2.Profile.FromString)
        for customer in sorted(set(self.ledger.new) | set(self.ledger.unanswered)):
            try:
                p = await profile(decision_pb2.ProfileRequest(customer_id=customer),
                                  timeout=CALL_TIMEOUT_S, metadata=self.keys.metadata("full"))
                applied = p.events_applied
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    problems.append(f"{customer}: GetProfile failed: {exc.code().name}")
                    continue
                applied = 0
            low = self.ledger.new[customer]
            high = low + self.ledger.unanswered[customer]
            if not low <= applied <= high:
                problems.append(f"{customer}: {applied} events applied, "
                                f"{low} acknowledged as new"
                                + (f" (+{high - low} never answered)" if high > low else ""))
        return problems

    async def still_decides(self) -> str | None:
        decide = self.channel.unary_unary(
            "/kairos.v1.DecisionService/Decide",
            request_serializer=decision_pb2.DecideRequest.SerializeToString,
            response_deserializer=decision_pb2.Decision.FromString)
        try:
            d = await decide(decision_pb2.DecideRequest(
                customer_id="fz-after", channel=self.vocab.channels[0]),
                timeout=CALL_TIMEOUT_S, metadata=self.keys.metadata("full"))
        except grpc.aio.AioRpcError as exc:
            return f"Decide after the run failed: {exc.code().name} {exc.details()}"
        return "Decide after the run answered the fallback" if d.fallback else None


def _acks(method: Method, answers: list) -> list:
    if method.name == "IngestBatch":
        return list(answers[0].acks) if answers else []
    return answers


async def vocabulary(channel: grpc.aio.Channel, keys: Keys, run: str) -> Vocabulary:
    md = keys.metadata("full")
    text = await channel.unary_unary(
        "/kairos.v1.AdminService/GetCatalog",
        request_serializer=admin_pb2.GetCatalogRequest.SerializeToString,
        response_deserializer=admin_pb2.CatalogText.FromString)(
        admin_pb2.GetCatalogRequest(), timeout=60, metadata=md)
    status = await channel.unary_unary(
        "/kairos.v1.AdminService/GetClusterStatus",
        request_serializer=admin_pb2.ClusterStatusRequest.SerializeToString,
        response_deserializer=admin_pb2.ClusterStatus.FromString)(
        admin_pb2.ClusterStatusRequest(), timeout=60, metadata=md)
    compiled = await asyncio.to_thread(compiled_from_text, text.yaml)
    return Vocabulary.of(compiled, text.yaml, len(status.shards), run)


async def fuzz(target: str, keys: Keys, n: int, seed: int, concurrency: int = 16,
               progress: bool = True) -> dict[str, Any]:
    """Run `n` requests against the gateway at `target`; the results (see the module doc)."""
    run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    options = [("grpc.max_send_message_length", 8 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        streams = grpc.insecure_channel(target, options=options)
        vocab = await vocabulary(channel, keys, f"{run}-{seed}")
        fuzzer = Fuzzer(channel, streams, keys, vocab, seed)
        started = time.perf_counter()
        await fuzzer.run(n, concurrency, progress)
        elapsed = time.perf_counter() - started
        ledger = await fuzzer.check_ledger()
        after = await fuzzer.still_decides()
        streams.close()
    t = fuzzer.tally
    return {
        "run": f"fuzz-{run}", "target": target, "seed": seed, "requests_planned": n,
        "calls": t.requests, "seconds": round(elapsed, 1),
        "statuses": {k: dict(v) for k, v in sorted(t.statuses.items())},
        "forbidden": t.violations,
        "examples": dict(sorted(t.examples.items())),
        "ledger": {"customers": len(fuzzer.ledger.new),
                   "events_acknowledged_new": sum(fuzzer.ledger.new.values()),
                   "events_never_answered": sum(fuzzer.ledger.unanswered.values()),
                   "problems": ledger},
        "after": after,
    }


# -- a Kairos of its own ----------------------------------------------------------------------

@contextmanager
def own_kairos(shards: int) -> Iterator[tuple[str, Keys, Any]]:
    """`kairos up` on a home, Ray temp dir, ports and keys of its own; `kairos down` after.
    Yields the gateway's address, the keys and a function listing the Ray actors' pids."""
    from kairos.cluster.cli import local
    from kairos.cluster.storage.redis_server import free_port

    home = Path(tempfile.mkdtemp(prefix="kairos-fuzz-"))
    ray_temp = tempfile.mkdtemp(prefix="kf-")  # short: Ray's socket paths live under it
    keys = Keys.fresh()
    keys_file = home / "keys.yaml"
    keys_file.write_text(keys.yaml())
    keys_file.chmod(0o600)
    env = {**os.environ, local.HOME_ENV: str(home / "home"),
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    kairos = str(Path(sys.executable).parent / "kairos")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([kairos, *args], env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    up = cli("up", "--shards", str(shards), "--port", str(free_port()), "--ray-port",
             str(free_port()), "--no-dashboard", "--console-port", "0",
             "--ray-temp-dir", ray_temp, "--keys", str(keys_file))
    if up.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"kairos up failed: {up.stderr[-2000:]}")
    try:
        run = json.loads((home / "home" / local.RUN_FILE).read_text())

        def actors() -> dict[int, str]:
            found = {}
            for proc in local.processes(local.Run(**run)):
                name = local.name_of(proc)
                if name.startswith("ray::") and "IDLE" not in name:
                    found[proc.pid] = name
            return found

        yield run["gateways"][0], keys, actors
    finally:
        cli("down")
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


def markdown(results: dict[str, Any]) -> str:
    codes = sorted({c for counts in results["statuses"].values() for c in counts})
    lines = [f"# Contract fuzz {results['run']}", "",
             f"{results['calls']} calls ({results['requests_planned']} requests and their "
             f"retries) in {results['seconds']} s against {results['target']}, seed "
             f"{results['seed']}.", "",
             "| RPC, mode | " + " | ".join(codes) + " |",
             "|---|" + "---:|" * len(codes)]
    for name, counts in results["statuses"].items():
        lines.append(f"| {name} | " + " | ".join(str(counts.get(c, "")) for c in codes) + " |")
    ledger = results["ledger"]
    lines += ["", "## Verdict", "",
              f"- INTERNAL or UNKNOWN answers: {len(results['forbidden'])}",
              f"- process restarts: {results.get('restarts', 'not known (external target)')}",
              f"- ledger: {ledger['events_acknowledged_new']} events acknowledged as new for "
              f"{ledger['customers']} customers, {ledger['events_never_answered']} never "
              f"answered; problems: {len(ledger['problems'])}",
              f"- deciding afterwards: {results['after'] or 'ok'}"]
    for v in results["forbidden"][:20]:
        lines.append(f"  - {v['rpc']} ({v['mode']}, key {v['key']}): {v['status']} "
                     f"{v['detail'][:200]}")
    for p in ledger["problems"][:20]:
        lines.append(f"  - {p}")
    return "\n".join(lines) + "\n"


def failed(results: dict[str, Any]) -> bool:
    return bool(results["forbidden"] or results["ledger"]["problems"] or results["after"]
                or results.get("restarts"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--shards", type=int, default=2, help="for a Kairos of its own")
    parser.add_argument("--target", help="HOST:PORT of a running gateway")
    parser.add_argument("--key", help="an API key with every scope, for --target")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="500 requests")
    args = parser.parse_args(argv)
    n = 500 if args.smoke else args.requests
    if args.target:
        results = asyncio.run(fuzz(args.target, Keys(full=args.key or ""), n, args.seed,
                                   args.concurrency))
    else:
        with own_kairos(args.shards) as (target, keys, actors):
            before = actors()
            results = asyncio.run(fuzz(target, keys, n, args.seed, args.concurrency))
            after = actors()
            results["restarts"] = sorted(f"{name} (pid {pid})" for pid, name in before.items()
                                         if pid not in after)
            results["actors"] = len(before)
    report.save(results, args.out, markdown(results))
    print(json.dumps({"run": results["run"], "calls": results["calls"],
                      "forbidden": len(results["forbidden"]),
                      "restarts": len(results.get("restarts", [])),
                      "ledger_problems": len(results["ledger"]["problems"]),
                      "failed": failed(results)}))
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
