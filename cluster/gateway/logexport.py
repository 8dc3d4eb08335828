"""ExportDecisionLog: the decision log of every shard, joined and in time order, streamed as
JSON lines (cluster/evidence/records.py) in chunks.

The gateway asks every shard the controller's map routes to (shard/decisionlog.py `read`: its
own log, and, from the first one with a shared store, the logs of shards no longer live) for the
decisions logged within [since, until] and the outcomes logged from `since` to OUTCOME_WINDOW_S
past `until` (a decision takes outcomes that long), joins each outcome to the decision it
names (outcomes may be in another shard's log: the customer's partition moved) and sends the
first `max_records` decisions by time. Everything is bounded: the range (MAX_SPAN_S), the
records (MAX_RECORDS, and each shard's outcomes), a chunk's bytes (CHUNK_BYTES).
"""
from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import grpc

from kairos.core.errors import InputError
from kairos.v1 import admin_pb2

from kairos.cluster.evidence.records import joined, to_json
from kairos.cluster.gateway.calls import Gateway, fail
from kairos.cluster.gateway.wire import time_in
from kairos.cluster.settings import OUTCOME_WINDOW_S
from kairos.cluster.transport.backend import Unavailable

MAX_SPAN_S = 31 * 86_400.0
DEFAULT_RECORDS = 5_000
MAX_RECORDS = 20_000  # a record is a few kB, and the gateway holds a shard's answer whole
CHUNK_BYTES = 1 << 20  # of JSON lines per chunk (a record is a few kB: its profile block)
EARLIEST, LATEST = 0.0, 3_786_912_000.0  # 1970 .. 2090, the engine's times and then some


async def export(gateway: Gateway, request: admin_pb2.ExportDecisionLogRequest, context
                 ) -> AsyncIterator[admin_pb2.DecisionLogChunk]:
    try:
        since, until, channel, limit = await _checked(gateway, request)
    except InputError as exc:
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}")
    try:
        async with asyncio.timeout(context.time_remaining()):
            # the shards the map routes to now (the controller's, as the client takes it)
            shards = (await gateway.backend.controller().get_map(-1, 0.0))["shards"]
            answers = await asyncio.gather(*(
                gateway.backend.shard(name).read_log(since, until, until + OUTCOME_WINDOW_S,
                                                     channel, limit, shards)
                for name in shards))
    except TimeoutError:
        await fail(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                   "the shards did not read their logs within the call's deadline")
    except Unavailable as exc:
        await fail(context, grpc.StatusCode.UNAVAILABLE, f"reading the decision log: {exc}")
    decisions = [d for found, _, _ in answers for d in found]
    outcomes = [o for _, heard, _ in answers for o in heard]
    truncated = len(decisions) > limit or any(cut for _, _, cut in answers)
    records = joined(decisions, outcomes)[:limit]
    lines: list[bytes] = []
    size = 0
    for record in records:
        line = json.dumps(to_json(record), separators=(",", ":")).encode() + b"\n"
        if lines and size + len(line) > CHUNK_BYTES:
            yield admin_pb2.DecisionLogChunk(records=b"".join(lines), count=len(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    yield admin_pb2.DecisionLogChunk(records=b"".join(lines), count=len(lines),
                                     truncated=truncated)


async def _checked(gateway: Gateway, request: admin_pb2.ExportDecisionLogRequest
                   ) -> tuple[float, float, str | None, int]:
    for field in ("since", "until"):
        if not request.HasField(field):
            raise InputError(field, "required (a timestamp)")
    since, until = time_in("since", request.since), time_in("until", request.until)
    for field, value in (("since", since), ("until", until)):
        if not EARLIEST <= value <= LATEST:
            raise InputError(field, "must be within 1970..2090")
    if until < since:
        raise InputError("until", "must not be before since")
    if until - since > MAX_SPAN_S:
        raise InputError("until", f"at most {MAX_SPAN_S / 86_400:g} days after since: "
                                  f"export a longer time in parts")
    if request.max_records > MAX_RECORDS:
        raise InputError("max_records", f"at most {MAX_RECORDS}, got {request.max_records}")
    channel = request.channel or None
    if channel is not None and channel not in (await gateway.catalog()).channel_index:
        raise InputError("channel", f"no channel {channel[:64]!r} in the running catalog")
    return since, until, channel, request.max_records or DEFAULT_RECORDS
