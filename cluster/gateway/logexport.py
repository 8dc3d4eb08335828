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
(CHUNK_BYTES), the decisions a page gathers from all shards (GATHERED_RECORDS: with many
shards a page holds fewer than `max_records`, and says there is more), the exports a gateway
runs at once (MAX_EXPORTS; another is refused RESOURCE_EXHAUSTED), each shard's read, to
the call's deadline (at most ADMIN_CALL_S), and the whole call, which ends DEADLINE_EXCEEDED
ADMIN_CALL_S after it began (a client that does not read its chunks held its place).
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import weakref
from typing import AsyncIterator, Callable

import grpc
import msgpack

from kairos.core.errors import InputError
from kairos.core.request import MAX_DECISION_ID_LENGTH, quoted
from kairos.v1 import admin_pb2

from kairos.cluster.evidence.records import (DecisionPage, PageOutcomes, decision_key, joined,
                                             to_json)
from kairos.cluster.gateway.calls import Gateway, fail
from kairos.cluster.gateway.wire import time_in
from kairos.cluster.settings import ADMIN_CALL_S, CLOCK_SKEW_S, OUTCOME_WINDOW_S
from kairos.cluster.transport.backend import Unavailable

MAX_SPAN_S = 31 * 86_400.0
DEFAULT_RECORDS = 5_000
MAX_RECORDS = 20_000  # a record is a few kB, and the gateway holds a shard's answer whole
CHUNK_BYTES = 1 << 20  # of JSON lines per chunk (a record is a few kB: its profile block)
MAX_TOKEN_LENGTH = 2 * MAX_DECISION_ID_LENGTH  # base64 of a time and a decision id
EARLIEST, LATEST = 0.0, 3_786_912_000.0  # 1970 .. 2090, the engine's times and then some
# Each shard answers with up to a page's decisions, all of which the gateway holds at once
GATHERED_RECORDS = 4 * MAX_RECORDS
MAX_EXPORTS = 4  # at once per gateway: each holds up to GATHERED_RECORDS records
_exporting: weakref.WeakKeyDictionary[Gateway, int] = weakref.WeakKeyDictionary()


async def export(gateway: Gateway, request: admin_pb2.ExportDecisionLogRequest, context
                 ) -> AsyncIterator[admin_pb2.DecisionLogChunk]:
    if _exporting.get(gateway, 0) >= MAX_EXPORTS:
        await fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   f"this gateway runs {MAX_EXPORTS} decision log exports at once already: "
                   f"try again when one has finished")
    _exporting[gateway] = _exporting.get(gateway, 0) + 1
    held = [True]

    def release() -> None:
        if held:
            held.pop()
            _exporting[gateway] -= 1
    # a client that never reads would hold its place till its deadline, or for ever without
    ending = asyncio.get_running_loop().call_later(ADMIN_CALL_S, _end, context,
                                                   asyncio.current_task(), release)
    try:
        async for chunk in _export(gateway, request, context):
            yield chunk
    finally:
        ending.cancel()
        release()


def _end(context, stream: asyncio.Task, release: Callable[[], None]) -> None:
    """End an export that ran past ADMIN_CALL_S (its chunks not read, most likely): the
    stream's task waits on gRPC to send one, so it is cancelled, once the status is handed to
    gRPC (which sends it after what it holds)."""
    release()
    aborting = asyncio.ensure_future(fail(
        context, grpc.StatusCode.DEADLINE_EXCEEDED,
        f"the export ran past {ADMIN_CALL_S:g} s, the most one holds one of this gateway's "
        f"{MAX_EXPORTS} places: read its chunks as they come, or ask for fewer records"))
    aborting.add_done_callback(lambda done: done.cancelled() or done.exception())
    asyncio.get_running_loop().call_soon(stream.cancel)


async def _export(gateway: Gateway, request: admin_pb2.ExportDecisionLogRequest, context
                  ) -> AsyncIterator[admin_pb2.DecisionLogChunk]:
    try:
        since, until, channel, limit, after = await _checked(gateway, request)
    except InputError as exc:
        await fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.reason}")
    remaining = context.time_remaining()
    deadline = asyncio.get_running_loop().time() + \
        min(ADMIN_CALL_S, math.inf if remaining is None else remaining)
    try:
        async with asyncio.timeout_at(deadline):
            # the shards the map routes to now (the controller's, as the client takes it)
            routing = await gateway.backend.controller().get_map(-1, 0.0)
            if routing is None:
                raise Unavailable("the controller has no map yet (it is starting)")
            shards = routing["shards"]
            limit = max(1, min(limit, GATHERED_RECORDS // max(len(shards), 1)))
            found = await _every_log(gateway, shards, DecisionPage(since, until, after, channel,
                                                                limit), deadline)
            page = sorted((d for decisions, _ in found for d in decisions),
                          key=lambda d: (d[0], d[1].decision_id))
            more = len(page) > limit or any(more for _, more in found)
            page = page[:limit]
            heard = await _every_log(gateway, shards, PageOutcomes(
                frozenset(decision_key(d.customer_id, d.decision_id) for _, d in page),
                page[0][0] - CLOCK_SKEW_S, page[-1][0] + OUTCOME_WINDOW_S + CLOCK_SKEW_S),
                deadline) if page else []
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


async def _every_log(gateway: Gateway, shards: list[str], query: DecisionPage | PageOutcomes,
                     deadline: float) -> list[tuple[list, bool | int]]:
    """Each shard's answer, within the call's deadline (a page of a long log takes longer than
    a control call's)."""
    timeout_s = max(deadline - asyncio.get_running_loop().time(), 0.001)
    return await asyncio.gather(*(gateway.backend.shard(name).read_log(query, shards, timeout_s)
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
        raise InputError("channel", f"no channel {quoted(channel)} in the running catalog")
    return since, until, channel, request.max_records or DEFAULT_RECORDS, \
        _after(request.page_token)
