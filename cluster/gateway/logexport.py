"""ExportDecisionLog: the decision log of every shard, a page at a time, each decision joined
to its outcomes, streamed as JSON lines (cluster/evidence/records.py) in chunks.

A page takes two rounds of the shards the controller's map routes to (shard/decisionlog.py
`read`: each its own log, and, from the first one with a shared store, the logs of shards no
longer live). First the decisions: each shard's first `max_records` logged within [since,
until] after the page token's, of which the gateway keeps the first `max_records` by the time
they were logged (then their ids). Then those decisions' outcomes, from every log (a
customer's partition may have moved since), logged from the page's first decision to
OUTCOME_WINDOW_S past its last (a decision takes outcomes that long), CLOCK_SKEW_S wider on
each side (two shards' clocks). The last chunk carries the token of the next page, which
starts after the last decision sent: pages neither repeat nor skip a decision, however many
share a moment, and a decision's outcomes are found whenever they came. Everything is
bounded: the range (MAX_SPAN_S), a page (MAX_RECORDS), a decision's outcomes
(records.py's OUTCOMES_PER_DECISION, counted in `outcomes_cut` past it), a chunk's bytes
(CHUNK_BYTES).
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import AsyncIterator

import grpc
import msgpack

from kairos.core.errors import InputError
from kairos.core.request import MAX_DECISION_ID_LENGTH
from kairos.v1 import admin_pb2

from kairos.cluster.evidence.records import (DecisionPage, PageOutcomes, decision_key, joined,
                                             to_json)
from kairos.cluster.gateway.calls import Gateway, fail
from kairos.cluster.gateway.wire import time_in
from kairos.cluster.settings import CLOCK_SKEW_S, OUTCOME_WINDOW_S
from kairos.cluster.transport.backend import Unavailable

MAX_SPAN_S = 31 * 86_400.0
DEFAULT_RECORDS = 5_000
MAX_RECORDS = 20_000  # a record is a few kB, and the gateway holds a shard's answer whole
CHUNK_BYTES = 1 << 20  # of JSON lines per chunk (a record is a few kB: its profile block)
MAX_TOKEN_LENGTH = 2 * MAX_DECISION_ID_LENGTH  # base64 of a time and a decision id
EARLIEST, LATEST = 0.0, 3_786_912_000.0  # 1970 .. 2090, the engine's times and then some


async def export(gateway: Gateway, request: admin_pb2.ExportDecisionLogRequest, context
                 ) -> AsyncIterator[admin_pb2.DecisionLogChunk]:
    try:
        since, until, channel, limit, after = await _checked(gateway, request)
    except InputError as exc:
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}")
    try:
        async with asyncio.timeout(context.time_remaining()):
            # the shards the map routes to now (the controller's, as the client takes it)
            routing = await gateway.backend.controller().get_map(-1, 0.0)
            if routing is None:
                raise Unavailable("the controller has no map yet (it is starting)")
            shards = routing["shards"]
            found = await _every_log(gateway, shards, DecisionPage(since, until, after, channel,
                                                                limit))
            page = sorted((d for decisions, _ in found for d in decisions),
                          key=lambda d: (d[0], d[1].decision_id))
            more = len(page) > limit or any(more for _, more in found)
            page = page[:limit]
            heard = await _every_log(gateway, shards, PageOutcomes(
                frozenset(decision_key(d.customer_id, d.decision_id) for _, d in page),
                page[0][0] - CLOCK_SKEW_S, page[-1][0] + OUTCOME_WINDOW_S + CLOCK_SKEW_S)
            ) if page else []
    except TimeoutError:
        await fail(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                   "the shards did not read their logs within the call's deadline")
    except Unavailable as exc:
        await fail(context, grpc.StatusCode.UNAVAILABLE, f"reading the decision log: {exc}")
    records = joined([d for _, d in page], [o for outcomes, _ in heard for o in outcomes])
    lines: list[bytes] = []
    size = 0
    for record in records:
        line = json.dumps(to_json(record), separators=(",", ":")).encode() + b"\n"
        if lines and size + len(line) > CHUNK_BYTES:
            yield admin_pb2.DecisionLogChunk(records=b"".join(lines), count=len(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    yield admin_pb2.DecisionLogChunk(
        records=b"".join(lines), count=len(lines), truncated=more,
        next_page_token=page_token(page[-1][0], page[-1][1].decision_id) if more else "",
        outcomes_cut=sum(cut for _, cut in heard))


async def _every_log(gateway: Gateway, shards: list[str], query: DecisionPage | PageOutcomes
                     ) -> list[tuple[list, bool | int]]:
    return await asyncio.gather(*(gateway.backend.shard(name).read_log(query, shards)
                                  for name in shards))


def page_token(logged: float, decision_id: str) -> str:
    """Where the next page starts: after the decision logged at `logged` with this id."""
    return base64.urlsafe_b64encode(msgpack.packb([logged, decision_id])).decode()


def _after(token: str) -> tuple[float, str] | None:
    """The (time logged, decision id) a page token names; None for the first page."""
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError
        logged, decision_id = msgpack.unpackb(
            base64.urlsafe_b64decode(token.encode()), max_str_len=MAX_DECISION_ID_LENGTH,
            max_array_len=2, max_map_len=0, max_bin_len=0, max_ext_len=0)
        if not isinstance(logged, float) or not math.isfinite(logged) or \
                not isinstance(decision_id, str):
            raise ValueError
    except (ValueError, TypeError, msgpack.UnpackException):
        raise InputError("page_token", "not a next_page_token this export gave") from None
    return logged, decision_id


async def _checked(gateway: Gateway, request: admin_pb2.ExportDecisionLogRequest
                   ) -> tuple[float, float, str | None, int, tuple[float, str] | None]:
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
    return since, until, channel, request.max_records or DEFAULT_RECORDS, \
        _after(request.page_token)
