"""What both services of a gateway share: its route into the runtime, the catalog it checks
requests against, the caller's deadline, and the bound on its work in flight.

A runtime call runs within the caller's deadline less a margin (kept back to answer in time,
a fallback decision included) and counts as in flight, in all and as its API key's: from the
admission of its call until that ends (HELD), else while it runs. `InflightLimit` refuses new
calls with RESOURCE_EXHAUSTED before their requests are parsed: past GATEWAY_INFLIGHT_LIMIT,
past what a key may hold of it (inflight.py), and the share the gateway sheds when its calls
queue (admission.py). `abort` maps the runtime's errors to status codes.
"""
from __future__ import annotations

from collections import Counter as Tally

import asyncio
import contextlib
import contextvars
import logging
import math
import re
import time
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.errors import InputError

from kairos.cluster.gateway.admission import Shedder
from kairos.cluster.gateway.auth import Denied, passed, refusal
from kairos.cluster.gateway.inflight import Inflight, held, key_label
from kairos.cluster.gateway.parsing import Wrappers
from kairos.cluster.gateway.requests import Who, view
from kairos.cluster.gateway.streambounds import Open
from kairos.cluster.gateway.streams import WATCH_AGAIN, Ended, Watch, Watches
from kairos.cluster.protocol import BEING_FORGOTTEN, EXPIRED
from kairos.cluster.settings import (DEADLINE_MARGIN_S, DEADLINE_MARGIN_SHARE, DEFAULT_DEADLINE_S,
                                     GATEWAY_INFLIGHT_LIMIT, INGEST_STREAMS,
                                     INGEST_STREAMS_PER_HOST, INGEST_STREAMS_PER_KEY)
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import Backend, NotCarried, NotSent, Unavailable
from kairos.cluster.transport.client import Busy, Conflict, KairosClient, ShardUnavailable
from kairos.cluster.transport.lanes import EarlierFailed

MAX_DETAILS = 1024  # characters of a status message
CATALOG_RECHECK_S = 1.0  # the most often refused requests have the controller asked
CATALOG_FOLLOW_S = 1.0  # how often the map is looked at for a catalog switch without calls
# after a failed fetch or compile of the catalog switched to, the first wait before the next,
# doubled each failure up to the second (a controller down, or a text this gateway cannot
# compile, would otherwise cost a call and a compile a second); short enough that a catalog is
# adopted soon after the controller is back, and waited anew once the map names another
CATALOG_RETRY_S = (1.0, 5.0)
CATALOG_FAILED_LOG_S = 60.0  # the most often such a failure is logged
ENDPOINTS_REFRESH_S = 1.0  # the most often GetRoutes asks the controller for the endpoints
SHEDDER_RESTART_S = 5.0  # after the load shedder failed, until it starts again
UNAVAILABLE_LOG_S = 10.0  # the most often the detail behind an UNAVAILABLE answer is logged
# What a caller is told for each kind of Unavailable, and whether it may have been applied;
# the detail (shard names, sockets, internal errors) is for the gateway's log only.
NOT_SENT = "the request did not reach the customer's shard and was not applied: retry"
NOT_CARRIED = ("the request cannot be sent to the customer's shard (a value or size the data "
               "plane does not carry) and was not applied")
SILENT = "the customer's shard did not answer"
FAILED = "the customer's shard failed the request"
# ...and then what a retry does, which depends on the RPC (`abort`'s `retry`): one that carries
# idempotency keys (Ingest, its batches and streams, Respond) may have been applied
KEYED = "the request may have been applied: retry with the same idempotency key"
READ = "retry"  # GetProfile and a Watch's alias: reads
# LinkIdentity and ForgetCustomer are sagas of idempotent steps (transport/sagas.py)
LINK = ("the link may be partly done: retry it, which finishes it and merges the alias's "
        "anonymous profile at most once (`merged` says whether this try merged it)")
FORGET = ("the forget may be partly done: retry ForgetCustomer, by the same id or alias, until "
          "it answers OK; a retry finishes it")
NO_ANSWER = f"{SILENT}; {KEYED}"  # a keyed RPC's messages
SHARD_FAILED = f"{FAILED}; {KEYED}"
EARLIER_FAILED = ("not sent: an earlier event of this call failed; none of that customer's "
                  "events after it was applied: retry the call with the same idempotency keys")
# ...and of an event of a call of several whose customer is being forgotten: BEING_FORGOTTEN's
# "nothing was applied" holds for that event, not for the call's others
FORGOTTEN_IN_CALL = ("an event's customer is being forgotten: that event was not applied, and "
                     "the call's other events may have been: retry ForgetCustomer, then the "
                     "call with the same idempotency keys")
# a shard's refusal meant for callers (README, Corruption), told without the damage's detail
# and its partition (a request by alias names the linked customer's, against which a guessed id
# is checked: the shard's log has it); the others, BEING_FORGOTTEN (protocol.py) and
# FORGOTTEN_IN_CALL, are passed on as they are
DAMAGED = re.compile(r"this customer's stored profile \(partition \d+\) is damaged")
DAMAGED_TOLD = "this customer's stored profile is damaged (the shard's log names its partition)"
# The DecisionService calls each counted in flight as one call from their admission until
# they end (`InflightLimit._holding`): the unary ones, whose runtime calls `within` then counts
# nothing more for.
# The others count their own way: IngestStream and IngestBatch each event, from its check
# (ingesting.py); WatchDecisions only its alias's resolution (`within`: a watch may last for
# hours), GetRoutes nothing.
HELD = frozenset(f"/kairos.v1.DecisionService/{method}" for method in (
    "Decide", "Ingest", "Respond", "GetProfile", "LinkIdentity", "ForgetCustomer"))
T = TypeVar("T")
log = logging.getLogger("kairos.gateway")


class Gateway(Inflight):
    """One gateway's state: its name (where shards push watched decisions), the node it runs
    on (when known), the client it routes through, the controller behind `backend`, its watch
    streams, and its calls in flight (in all, and by API key: `Inflight`)."""

    def __init__(self, name: str, client: KairosClient, backend: Backend,
                 node: str | None = None):
        super().__init__(name, lambda: GATEWAY_INFLIGHT_LIMIT)  # a test's limit too
        self.node = node
        self.client = client
        self.backend = backend
        self.watches = Watches(name, client, backend)
        self.ingest_streams = Open("ingest", "INGEST_STREAMS", lambda: (
            INGEST_STREAMS, INGEST_STREAMS_PER_KEY, INGEST_STREAMS_PER_HOST))
        self.fallbacks: Tally = Tally()  # fallback decisions answered, by why
        self.watches_refused: Tally = Tally()  # health Watches past their bound, by answer
        self.shedder = Shedder()
        self._compiled: CompiledCatalog | None = None
        self._refresh: asyncio.Future | None = None
        self._refresh_wait = CATALOG_RETRY_S[0]  # after the next failed refresh
        self._refresh_after = -math.inf  # no refresh starts on its own before (monotonic)
        self._failed_for: str | None = None  # the map's catalog version the wait is for
        self._rechecked = -math.inf  # when a refusal last had the controller's catalog asked
        self._shedding: asyncio.Task | None = None
        self._following: asyncio.Task | None = None
        self._endpoints: dict[str, str] = {}  # shard -> its own endpoint (GetRoutes)
        self._endpoints_at = -math.inf

    def start(self) -> None:
        """Start keeping the share of calls to shed, and following the catalog (within the
        serving event loop)."""
        self._shedding = asyncio.get_running_loop().create_task(self._shed())
        self._following = asyncio.get_running_loop().create_task(self._follow_catalog())

    async def _follow_catalog(self) -> None:
        """Compile the catalog the cluster switched to even while no call asks for it: watch
        streams on a view it took away end only then (`refresh_catalog`). A failed refresh
        is logged (`_refreshed`) and waited out (CATALOG_RETRY_S)."""
        while True:
            await asyncio.sleep(CATALOG_FOLLOW_S)
            with contextlib.suppress(Exception):  # the next look, or a call, tries again
                await self.catalog()
                if self._refresh is not None:
                    await asyncio.shield(self._refresh)

    async def _shed(self) -> None:
        """The shedder's loop, started again SHEDDER_RESTART_S after it fails: a failed one
        admits everything, so an overload would go unrefused for as long as it stayed down."""
        failures = 0
        while True:
            try:
                await self.shedder.run()
            except Exception as exc:  # noqa: BLE001  (logged; the loop goes on without it)
                failures += 1
                log.error("%s: the load shedder failed (%d times so far: %s); every call is "
                          "admitted until it starts again in %.0f s", self.name, failures,
                          exc, SHEDDER_RESTART_S, exc_info=failures == 1)  # one traceback
            await asyncio.sleep(SHEDDER_RESTART_S)

    async def close(self) -> None:
        tasks = [task for task in (self._shedding, self._following) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    @property
    def routable(self) -> bool:
        """Whether it has what every call needs: a partition map (maps start at version 1)
        and a catalog."""
        return self.client.version > 0 and self._compiled is not None

    async def routes(self) -> tuple[int, int, list[str], list[int]]:
        """GetRoutes: the map's version, the partition count, each shard's endpoint ("" for
        none) and each partition's owner's index. The endpoints are the controller's, asked
        at most once an ENDPOINTS_REFRESH_S (the last known while it cannot answer)."""
        now = time.monotonic()
        if now - self._endpoints_at >= ENDPOINTS_REFRESH_S:
            self._endpoints_at = now
            with contextlib.suppress(Unavailable):
                self._endpoints = await self.backend.controller().shard_endpoints()
        version, shards, owners = self.client.routes()
        return version, len(owners), [self._endpoints.get(s, "") for s in shards], owners

    async def catalog(self) -> CompiledCatalog:
        """The catalog the cluster runs, for validation and fallbacks. After a switch (seen in
        the routing table) the new version compiles in the background; until it is ready the
        previous one serves, so no call waits for a compile."""
        if self._compiled is None:
            await self.refresh_catalog()
        elif self._compiled.version != self.client.catalog_version and self._refresh is None \
                and (time.monotonic() >= self._refresh_after
                     or self.client.catalog_version != self._failed_for):
            self._start_refresh()
        return self._compiled

    def _start_refresh(self) -> None:
        """`refresh_catalog` in the background, which callers may wait for or not."""
        # every caller's, none's share: not in the context of the call that started it
        self._refresh = asyncio.get_running_loop().create_task(
            self.refresh_catalog(), context=contextvars.Context())
        self._refresh.add_done_callback(self._refreshed)

    def _refreshed(self, refresh: asyncio.Future) -> None:
        """A background refresh ended: after a failure (its exception taken here, as its
        waiters may all have left), none starts on its own for a while, longer each time, and
        the failure is logged at most once a CATALOG_FAILED_LOG_S; a switch the map names
        since (another version) is tried at once, and waited out afresh."""
        exc = None if refresh.cancelled() else refresh.exception()
        if exc is None or self.client.catalog_version != self._failed_for:
            self._refresh_wait, self._refresh_after = CATALOG_RETRY_S[0], -math.inf
        self._failed_for = self.client.catalog_version
        if exc is None:
            return
        self._refresh_after = time.monotonic() + self._refresh_wait
        _CATALOG_FAILED.warn("%s: the catalog the cluster switched to (%s) could not be had "
                             "(tried again in %.0f s; %s serves meanwhile): %s: %s", self.name,
                             self.client.catalog_version, self._refresh_wait,
                             self._compiled and self._compiled.version, type(exc).__name__, exc)
        self._refresh_wait = min(self._refresh_wait * 2, CATALOG_RETRY_S[1])

    async def checked(self, check: Callable[[CompiledCatalog], T], timeout_s: float) -> T:
        """`check(catalog)` with the catalog `catalog()` gives. What it refuses (InputError,
        or Denied: a type the catalog's `events.<type>.channels` keep from a channel-bound
        key, `requests.check_sender`) is checked again against the catalog the cluster
        switched to, when there is one this gateway has not compiled yet (seen in the routing
        table, or else asked of the controller, at most once a CATALOG_RECHECK_S): a request
        made for the new catalog (a Respond to a decision that showed a new action, an event
        of a new type, or of a type the new one lets the key's channel send) is not refused by
        the old one. Only the catalog refuses within `check` (Denied included): the key's own
        rights, which no catalog changes (check_channel, require_scope), are checked before
        it. Requests it accepts never wait for a compile; one that waits for it waits at most
        `timeout_s` (the caller's time left), then TimeoutError: it may be valid, so it is not
        refused (INVALID_ARGUMENT and PERMISSION_DENIED are not retried)."""
        catalog = await self.catalog()
        try:
            return check(catalog)
        except (InputError, Denied) as refused:
            now = time.monotonic()
            if self._refresh is None and self._compiled is catalog and \
                    now - self._rechecked >= CATALOG_RECHECK_S:
                self._rechecked = now  # the shards may have switched before the map said so
                self._start_refresh()
            if self._refresh is not None:
                try:
                    async with asyncio.timeout(timeout_s):
                        await asyncio.shield(self._refresh)  # others may wait for it longer
                except TimeoutError:
                    raise TimeoutError("the catalog the cluster switched to, which the request "
                                       "may be meant for, was not ready in time") from None
                except Exception:  # the newer catalog could not be had: the refusal stands
                    raise refused from None
            if self._compiled is catalog:
                raise
        return check(self._compiled)

    async def refresh_catalog(self) -> None:
        """Compile the controller's catalog, unless it is the version this gateway has.

        In a thread: after a switch every gateway compiles at once, and the compile's C
        stretches (YAML) hold the GIL from the loop. Measured on 2 busy cores: the shipped
        50 KiB catalog, 0.1-0.2 s, stalls the loop up to 7-11 ms at a time (58 ms seen); 210
        KiB, 20-100 ms; 1 MiB, 2.3-4.1 s of stalls of up to 270-370 ms. Compiling in a process
        (compiling.py) and unpickling the CompiledCatalog here was measured too, and is no
        clear gain: the unpickle is one stall as long (9-16 ms, 36-82 ms, 290-420 ms), and of
        calls arriving every 2 ms that need ten turns of the loop within 50 ms about as many
        missed (in a process against in a thread: none for the shipped catalog; 0-43 against
        0-12 for 210 KiB; 240-380 against 310-360 for 1 MiB). It would cost a process per
        switch, and a shard's endpoint the compiled catalog it shares with its shard (the
        compiler's cache)."""
        try:
            running = await self.backend.controller().get_catalog()
            if self._compiled is None or self._compiled.version != running["version"]:
                self._compiled = compiled = await asyncio.get_running_loop().run_in_executor(
                    None, compiled_from_text, running["text"])
                self.watches.end_where(lambda watch, _: _view_left(compiled, watch))
                self.watches.register_again()  # a switch between may have dropped them
        finally:
            self._refresh = None

    @staticmethod
    def timeout(context) -> float:
        """What is left of the caller's deadline, less the margin kept back to answer."""
        remaining = context.time_remaining()
        remaining = DEFAULT_DEADLINE_S if remaining is None else remaining
        return max(0.0, remaining - max(DEADLINE_MARGIN_S, DEADLINE_MARGIN_SHARE * remaining))

    def expires(self, context) -> float:
        """The wall-clock time a runtime call started now is waited for until (`timeout`): a
        shard that reaches a Decide later skips it (protocol.Decide's `expires`)."""
        return time.time() + self.timeout(context)

    async def call(self, context, work: Awaitable, fallback: Callable[[], Any] | None = None,
                   retry: str = KEYED) -> Any:
        """Run the runtime call within the deadline; a timeout or an unavailable shard gives
        `fallback()` when there is one; errors become status codes (`abort`, told `retry`)."""
        try:
            return await self.within(work, self.timeout(context))
        except (asyncio.TimeoutError, Unavailable) as exc:
            if fallback is not None:
                # expired: a shard skipped it past its expiry (answered in time, a shard's
                # clock ahead of this one's: KAIROS_SHARD_CLOCK_SKEW_S)
                self.fallbacks["expired" if str(exc) == EXPIRED else "deadline" if isinstance(
                    exc, asyncio.TimeoutError) else "unavailable"] += 1
                return fallback()
            await abort(context, exc, retry)
        except (InputError, Busy, Conflict) as exc:
            await abort(context, exc)

    async def within(self, work: Awaitable, timeout_s: float) -> Any:
        """`work`, a runtime call, within `timeout_s`; counted in flight while it runs, unless
        its call counts already (from its admission: `Inflight.hold`)."""
        counted = not held()
        if counted:
            key = key_label()
            self.count(key)
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        finally:
            if counted:
                self.uncount(key)

    async def as_customer(self, who: Who, call: Callable[[str], Awaitable]) -> Any:
        """`call(customer_id)` for the customer a request names, its alias resolved."""
        customer_id = who.customer_id
        if who.alias_key is not None:
            customer_id = await self.client.resolve_key(who.alias_key)
        return await call(customer_id)

    def admit(self) -> str | None:
        """Raise Busy for a new call the gateway sheds, or one past its in-flight limit or
        its key's share; else the key its calls count as (`check_capacity`)."""
        key = self.check_capacity()
        if not self.shedder.admits():
            raise Busy(f"gateway {self.name} is overloaded: its event loop is "
                       f"{self.shedder.delay_s * 1e3:.0f} ms late and wants a CPU "
                       f"{self.shedder.busy:.0%} of the time; it refuses "
                       f"{self.shedder.shed_share:.0%} of new calls")
        return key


class InflightLimit(grpc.aio.ServerInterceptor):
    """Refuses DecisionService calls with RESOURCE_EXHAUSTED while the gateway is at its
    limit, or sheds them; with UNAVAILABLE (try again) while it has no map to route them by
    yet. AdminService calls go through, uncounted: an operator must be able to read the
    status of, and scale, a saturated cluster (they need the admin scope, and are few). The
    HELD calls are admitted as their handlers start (`_holding`), their request read but not
    parsed, as a refusal's would be."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self._wrappers = Wrappers(self._holding)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith("/kairos.v1.DecisionService/") \
                or not passed():  # refused by auth: neither counted nor drawn for shedding
            return handler
        if not self.gateway.routable:
            return refusal(handler, grpc.StatusCode.UNAVAILABLE,
                           f"gateway {self.gateway.name} has no partition map yet (the "
                           f"cluster is starting): try again")
        if details.method in HELD:
            return self._wrappers.of(handler, details.method)
        try:
            self.gateway.admit()
        except Busy as exc:
            return refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return handler

    def _holding(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler`, a unary call's, admitted as it starts and counted in flight from there
        until it ends however it ends (answered, refused, aborted, cancelled, past its
        deadline), checked and counted with no await between (`Inflight.hold`). A call
        that ends before its request is read never starts: never counted, nothing to give
        back."""
        behavior = handler.unary_unary

        async def admitted(request: bytes, context) -> Any:
            try:
                key = self.gateway.admit()
            except Busy as exc:
                await fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            token = self.gateway.hold(key)
            try:
                return await behavior(request, context)
            finally:
                self.gateway.release(key, token)
        return grpc.unary_unary_rpc_method_handler(
            admitted, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _view_left(catalog: CompiledCatalog, watch: Watch) -> str | None:
    """Why a stream on `watch` ends with the switch to `catalog`: its view is not in it (the
    shards dropped its watches); None if it is."""
    try:
        view(catalog, watch.channel, watch.placement)
    except InputError as exc:
        return (f"the catalog the cluster switched to ({catalog.version}) has no "
                f"{watch.channel}/{watch.placement} ({exc.reason}): this watch ended; "
                f"{WATCH_AGAIN} on a view it has")
    return None


async def abort(context, exc: BaseException, retry: str = KEYED) -> None:
    """End the call with the status code for `exc` (re-raised if it has none). `retry`: what
    the caller is told a retry does, when the call may have been applied (KEYED, READ, LINK,
    FORGET)."""
    code = _code_of(exc)
    if code is None:
        raise exc
    if isinstance(exc, Unavailable):
        details = _unavailable(exc, retry)
    elif isinstance(exc, TimeoutError) and not str(exc):
        details = "the customer's shard did not answer in time"
    else:
        details = str(exc)
    await fail(context, code, details)


# a shard that is down fails every call routed to it
_UNAVAILABLE_DETAIL = ThrottledWarning(log, UNAVAILABLE_LOG_S)
_CATALOG_FAILED = ThrottledWarning(log, CATALOG_FAILED_LOG_S)


def _unavailable(exc: Unavailable, retry: str) -> str:
    """What a caller is told of `exc`: whether its request may have been applied (and then
    `retry`), not the transport's or the shard's detail, which is logged here (at most once an
    UNAVAILABLE_LOG_S)."""
    _UNAVAILABLE_DETAIL.warn("a call ended UNAVAILABLE: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, NotCarried):
        return NOT_CARRIED
    if isinstance(exc, EarlierFailed):
        return EARLIER_FAILED
    if isinstance(exc, NotSent):
        return NOT_SENT
    if isinstance(exc, ShardUnavailable):
        if str(exc) in (BEING_FORGOTTEN, FORGOTTEN_IN_CALL):
            return str(exc)
        return f"{FAILED}; {retry}" if DAMAGED.match(str(exc)) is None else DAMAGED_TOLD
    return f"{SILENT}; {retry}"


async def fail(context, code: grpc.StatusCode, details: str) -> None:
    """End the call with `code`, its message shortened to fit the trailers."""
    await context.abort(code, shorten(details))


def _code_of(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, Denied):
        return exc.code
    for kind, code in ((InputError, grpc.StatusCode.INVALID_ARGUMENT),
                       (Busy, grpc.StatusCode.RESOURCE_EXHAUSTED),
                       (Ended, grpc.StatusCode.NOT_FOUND),
                       (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
                       (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
                       (Unavailable, grpc.StatusCode.UNAVAILABLE)):
        if isinstance(exc, kind):
            return code
    return None


def shorten(details: str) -> str:
    """A status message short enough for the trailers. An error may quote what the caller
    sent, and a 64 KiB quote would exceed grpc's metadata limit (16 KiB): the caller would get
    RESOURCE_EXHAUSTED from its own library instead of the reason."""
    if len(details) <= MAX_DETAILS:
        return details
    return details[:MAX_DETAILS - 30] + f"... ({len(details)} characters)"
