"""A silent-connection flood on a shard's data plane: what the README says it costs.

A flooder keeps N connections to a shard's PlaneServer open and silent, opening another as soon
as the shard closes one, from the client's own source address or from another; meanwhile a real
client opens 20 connections and calls the shard on one it established before the flood began.
Three processes on one machine: the shard (a ShardHost on a memory store behind a PlaneServer,
plaintext on 127.0.0.1), the flooder, and the client (this one). For each scenario: the
connections the client opened of 20, the shard process's CPU (% of one core, from /proc through
psutil: the shard's alone, not the flooder's) while the flood is settled, and the latency of
calls on the established connection (median and max), each over the repeats.

    python -m bench.flood           # 3 repeats of 200 and 500 silent, about 2 minutes on 2 cores
    python -m bench.flood --quick   # seconds (the test suite uses it so it never rots)

Writes bench/results/flood-<time>.json (every repeat's figures, the inputs, the machine, the
revision, settings and load average) and .md (the table the README quotes), and prints a JSON
summary as its last line.
"""
from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.protocol import OK, Event
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.dataplane import HANDSHAKE_S, PlaneConnection, PlaneServer
from kairos.core.compiler import default_compiled

from . import quickrun
from .quickrun import spread
from .workload import T0

PARTITIONS = 64
HOST = "127.0.0.1"  # the shard's address and the client's source
OTHER_SOURCE = "127.0.0.2"  # a stranger's: loopback answers all of 127/8
CLIENT_OPENS = 20
# a turned-away open fails within milliseconds; one left waiting is cut short so that a repeat
# stays bounded (HANDSHAKE_S would let 20 of them take minutes), and counted as not opened
OPEN_S = 3.0
CALL_GAP_S = 0.01  # between calls on the established connection, as a client's batches come
CUSTOMER = "c0"


def _scenarios(quick: bool) -> list[tuple[str, int, str | None]]:
    """(name, silent connections, their source); the first has no flood."""
    n = (60, 150) if quick else (200, 500)
    return [("no_flood", 0, None), (f"{n[0]}_same_source", n[0], HOST),
            (f"{n[1]}_same_source", n[1], HOST), (f"{n[1]}_other_source", n[1], OTHER_SOURCE)]


# -- the shard's process ----------------------------------------------------------------------


def _shard(pipe: Connection) -> None:
    """A shard as its actor serves the data plane: a ShardHost's handle behind a PlaneServer,
    until the pipe says stop."""
    async def main() -> None:
        host = ShardHost("flood", PARTITIONS, 0, MemoryStore, "fsync")
        await host.start(default_compiled(), {p: 0 for p in range(PARTITIONS)}, [])
        server = PlaneServer(host.handle)
        pipe.send((await server.start(HOST), server.secret, server.fingerprint))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        server.close()
        host.stop()
    asyncio.run(main())


# -- the flooder's process --------------------------------------------------------------------


def _flooder(pipe: Connection, address: tuple[str, int], n: int, source: str) -> None:
    """Keep `n` connections from `source` open and silent, each reopened as the shard closes
    it, until the pipe says stop; then send how many were opened and how many failed."""
    async def main() -> None:
        stop = asyncio.Event()
        counts: Counter = Counter()

        async def one() -> None:
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(*address,
                                                                   local_addr=(source, 0))
                except OSError:
                    counts["failed"] += 1
                    await asyncio.sleep(0.01)
                    continue
                counts["opened"] += 1
                try:
                    while await reader.read(1024):  # silent: only read until closed
                        pass
                except OSError:
                    pass
                writer.close()

        loop = asyncio.get_running_loop()
        floods = [loop.create_task(one()) for _ in range(n)]
        pipe.send("flooding")
        await loop.run_in_executor(None, pipe.recv)
        stop.set()
        for task in floods:
            task.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
        pipe.send(dict(counts))
    asyncio.run(main())


# -- the client (this process) ----------------------------------------------------------------


class Shard:
    """The shard's process and where it serves."""

    def __init__(self, context: multiprocessing.context.SpawnContext):
        self._pipe, theirs = context.Pipe()
        self.process = context.Process(target=_shard, args=(theirs,), daemon=True)
        self.process.start()
        self.address, self.secret, self.fingerprint = self._pipe.recv()
        self.cpu = psutil.Process(self.process.pid)

    async def connect(self) -> PlaneConnection:
        return await asyncio.wait_for(
            PlaneConnection.open(*self.address, self.secret, self.fingerprint), OPEN_S)

    def stop(self) -> None:
        self._pipe.send("stop")
        self.process.join(10)


async def _calls(connection: PlaneConnection, session: str, calls: int
                 ) -> tuple[list[float], int]:
    """Wall ms of each of `calls` one-event batches on the established connection, and how
    many the shard acknowledged OK."""
    ms, ok = [], 0
    for seq in range(calls):
        event = Event(partition=partition_of(CUSTOMER, PARTITIONS), customer_id=CUSTOMER,
                      event_type="page_view", time=T0 + seq,
                      attributes={"category": "electronics"})
        began = time.perf_counter()
        reply, = await connection.call(session, seq, [event], [0])
        ms.append((time.perf_counter() - began) * 1e3)
        ok += reply[0] == OK
        await asyncio.sleep(CALL_GAP_S)
    return ms, ok


async def _opens(shard: Shard) -> dict[str, Any]:
    """Open CLIENT_OPENS connections one after another from HOST, each closed once open."""
    opened, ms, failures = 0, [], Counter()
    for _ in range(CLIENT_OPENS):
        began = time.perf_counter()
        try:
            await (await shard.connect()).close()
            opened += 1
        except (ConnectionError, TimeoutError) as exc:
            # the reason without the address, whose port changes with each run
            where = "{}:{}".format(*shard.address)
            failures[str(exc).replace(where, "the shard")[:80] or type(exc).__name__] += 1
        ms.append((time.perf_counter() - began) * 1e3)
    return {"opened": opened, "attempts": CLIENT_OPENS, "open_ms": spread(ms, "ms", 2),
            "failures": dict(failures)}


def _cpu_percent(process: psutil.Process, began: tuple[float, float]) -> float:
    """% of one core the process used since `began` (its CPU seconds, the wall clock)."""
    cpu, wall = began
    return (_cpu_seconds(process) - cpu) / (time.monotonic() - wall) * 100


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _scenario(context: multiprocessing.context.SpawnContext, shard: Shard, name: str,
                    n: int, source: str | None, settle_s: float, calls: int) -> dict[str, Any]:
    """One repeat of a scenario: the established connection opened, the flood started and
    let settle, the calls timed with the shard's CPU taken over them, then the client's opens;
    the flood stopped and its connections let go."""
    connection = await shard.connect()  # before the flood: established
    flood = None
    if n:
        pipe, theirs = context.Pipe()
        flood = context.Process(target=_flooder, args=(theirs, shard.address, n, source),
                                daemon=True)
        flood.start()
        pipe.recv()
    await asyncio.sleep(settle_s)
    shard_began = (_cpu_seconds(shard.cpu), time.monotonic())
    flooder_cpu = psutil.Process(flood.pid) if flood else None
    flooder_began = (_cpu_seconds(flooder_cpu), time.monotonic()) if flooder_cpu else None
    ms, ok = await _calls(connection, f"{name}-{time.monotonic_ns()}", calls)
    shard_cpu = _cpu_percent(shard.cpu, shard_began)
    flooder_percent = _cpu_percent(flooder_cpu, flooder_began) if flooder_cpu else 0.0
    opens = await _opens(shard)
    await connection.close()
    flooded: dict[str, int] = {}
    if flood:
        pipe.send("stop")
        flooded = pipe.recv()
        flood.join(10)
    await asyncio.sleep(settle_s / 2)  # the shard lets the flood's connections go
    return {"call_ms": ms, "calls_ok": ok, "shard_cpu_percent": round(shard_cpu, 1),
            "flooder_cpu_percent": round(flooder_percent, 1), **opens,
            "flood_connections_opened": flooded.get("opened", 0),
            "flood_connect_failures": flooded.get("failed", 0)}


async def _run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    repeats, settle_s, calls = (1, 0.5, 20) if quick else (3, 3.0, 100)
    context = multiprocessing.get_context("spawn")
    shard = Shard(context)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in _scenarios(quick)}
    try:
        for _ in range(repeats):  # the scenarios in turn: a busy moment slows all alike
            for name, n, source in _scenarios(quick):
                runs[name].append(await _scenario(context, shard, name, n, source, settle_s,
                                                  calls))
    finally:
        shard.stop()
    scenarios = {}
    for name, n, source in _scenarios(quick):
        done = runs[name]
        scenarios[name] = {
            "silent_connections": n, "flood_source": source, "client_source": HOST,
            "client_opened": [r["opened"] for r in done],
            "client_attempts": [r["attempts"] for r in done],
            "client_open_failures": [r["failures"] for r in done],
            "client_open_ms": [r["open_ms"] for r in done],
            "shard_cpu_percent": spread([r["shard_cpu_percent"] for r in done], "% of a core", 1),
            "flooder_cpu_percent": spread([r["flooder_cpu_percent"] for r in done],
                                          "% of a core", 1),
            "call_ms_median": spread([statistics.median(r["call_ms"]) for r in done], "ms"),
            "call_ms_max": spread([max(r["call_ms"]) for r in done], "ms"),
            "calls": [len(r["call_ms"]) for r in done], "calls_ok": [r["calls_ok"] for r in done],
            "flood_connections_opened": [r["flood_connections_opened"] for r in done],
            "flood_connect_failures": [r["flood_connect_failures"] for r in done]}
    inputs = {"repeats": repeats, "settle_s": settle_s, "calls_per_repeat": calls,
              "call_gap_s": CALL_GAP_S, "client_opens": CLIENT_OPENS, "open_timeout_s": OPEN_S,
              "handshake_s": HANDSHAKE_S, "tls": shard.fingerprint is not None,
              "shard": "ShardHost (memory store, default catalog) behind a PlaneServer, "
                       "in a process of its own",
              "call": "one page_view event per batch on a connection opened before the flood",
              "cpu": "the shard process's user + system seconds over the calls, /proc (psutil)",
              "flooder": "a process of its own on the same machine, over loopback: it shares "
                         "the shard's CPUs"}
    return scenarios, inputs


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo()
                  if line.startswith("model name")), platform.processor() or None)
    return {"cpu_model": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1)}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def finite(scenarios: dict[str, Any]) -> bool:
    return all(math.isfinite(s[figure][k]) for s in scenarios.values()
               for figure in ("shard_cpu_percent", "flooder_cpu_percent", "call_ms_median",
                              "call_ms_max") for k in ("median", "min", "max"))


def _range(figure: dict[str, Any], unit: str = "") -> str:
    low, high = f"{figure['min']:g}", f"{figure['max']:g}"
    return (low if low == high else f"{low}-{high}") + unit


def markdown(report: dict[str, Any]) -> str:
    where = report["machine"]
    lines = [f"# Silent-connection flood {report['time']}", "",
             f"`{report['command']}` (load average at start "
             f"{report['provenance']['load_average_at_start']}, {where['cpus']} CPUs "
             f"{where['cpu_model']}; revision {report['provenance']['revision']}; the flooder "
             f"shares the machine). Each cell: the lowest-highest over "
             f"{report['inputs']['repeats']} repeat(s).", "",
             "| scenario | silent connections | from | client opened | shard CPU | "
             "flooder CPU | call median | call max |",
             "|---|---:|---|---|---|---|---|---|"]
    for name, s in report["scenarios"].items():
        opened = ", ".join(f"{o} of {a}" for o, a in zip(s["client_opened"],
                                                           s["client_attempts"]))
        lines.append(f"| {name} | {s['silent_connections']} | {s['flood_source'] or '-'} | "
                     f"{opened} | {_range(s['shard_cpu_percent'], ' %')} | "
                     f"{_range(s['flooder_cpu_percent'], ' %')} | "
                     f"{_range(s['call_ms_median'], ' ms')} | "
                     f"{_range(s['call_ms_max'], ' ms')} |")
    lines += ["", "CPU: % of one core. Calls: one-event batches on a connection opened before "
              "the flood, from the client's source " + HOST + ".", "",
              f"Inputs: `{json.dumps(report['inputs'])}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    def measure(quick: bool) -> dict[str, Any]:
        scenarios, inputs = asyncio.run(_run(quick))
        return {"machine": machine(), "inputs": inputs, "scenarios": scenarios}

    quickrun.main("flood", __doc__.splitlines()[0], measure, markdown, lambda report: {
        "finite": finite(report["scenarios"]),
        "client_opened": {n: s["client_opened"] for n, s in report["scenarios"].items()}},
        argv)


if __name__ == "__main__":
    main()
