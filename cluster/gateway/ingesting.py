"""DecisionService's ingest calls (a part of it: decisions.py): Ingest, one event;
IngestStream, events as they arrive, acked in order; IngestBatch, events checked and routed all
at once or refused whole. Events are checked (requests.py) and their aliases resolved before
they are routed; those of a stream or a batch go unsent together once it ends (`Call`), and the
failure of one that ends a call of several tells the caller what the others may have become
(`_of_many`)."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable, NamedTuple

from kairos.core.compiler import CompiledCatalog
from kairos.core.errors import InputError
from kairos.v1 import decision_pb2 as pb

from kairos.cluster import protocol
from kairos.cluster.gateway import answerbound, requests, wire
from kairos.cluster.gateway.auth import Denied, caller, check_channel, require_scope
from kairos.cluster.gateway.bounds import host_of
from kairos.cluster.gateway.calls import FORGOTTEN_IN_CALL, abort
from kairos.cluster.gateway.streambounds import IdleLimit, WaitLimit
from kairos.cluster.settings import INGEST_STREAM_IDLE_S, INGEST_STREAM_STALL_S, STREAM_WINDOW
from kairos.cluster.transport.backend import NotCarried, NotSent, Unavailable
from kairos.cluster.transport.client import Busy, ShardUnavailable
from kairos.cluster.transport.lanes import Call, EarlierFailed

# an event's decide_placement asks for a decision: an ingest-only key got them through it
DECIDING = "decide_placement asks for a decision, which needs a key with the 'decide' scope"
BATCH_LIMIT = 10_000  # events in one IngestBatch (the proto says so)
# A batch's events checked, and acked, between turns of the event loop: 9,000 at once held it
# for 70-130 ms (checks), 30-60 ms (acks), and Decides with short deadlines failed meanwhile
CHUNK = 256
IDLE = (f"the stream sent no event for {INGEST_STREAM_IDLE_S:.0f} s (KAIROS_INGEST_STREAM_IDLE_S): "
        f"the gateway ended it; the events acked on it were applied, none after them: open a "
        f"new stream to send more")
STALLED = (f"the caller read no ack for {INGEST_STREAM_STALL_S:.0f} s with its window of "
           f"{STREAM_WINDOW} events unacked (KAIROS_INGEST_STREAM_STALL_S, "
           f"KAIROS_STREAM_WINDOW): the gateway ended the stream; the events acked on it "
           f"were applied, and those sent after them may have been: send again from the first "
           f"one not acked, with the same idempotency keys")
UNREAD = (f"the caller read no ack for {INGEST_STREAM_IDLE_S:.0f} s after it stopped sending "
          f"(KAIROS_INGEST_STREAM_IDLE_S): the gateway ended the stream; the events acked on it "
          f"were applied, and those sent after them may have been: send again from the first "
          f"one not acked, with the same idempotency keys")
ENDING = "the status of a stalled IngestStream"  # its task's name
# first, so that a status message cut to its bound (a long key name) keeps it
NO_ROOM = ("the gateway ended the stream at {event} (counted from the stream's first, 0): it "
           "was not applied, nor any event sent after it, and those acked before it were: send "
           "again from it on a new stream; no room for it: ")
ROUTED = ("; the customer's shard refused it once the call's events were routed: its other "
          "events may have been applied")


class ShardRefused(InputError):
    """An event its shard refused (INVALID_ARGUMENT), though the gateway's checks, the
    engine's own, had passed it (the shard runs another catalog, or sees the time otherwise):
    routed already, as the rest of its call may be."""


class _Pending(NamedTuple):
    """An event of a stream on its way: routed as it was read (`request` and the future of
    the shard's `reply`, due by `due`, the loop's time), or by a task (`task`: its alias
    resolved, behind the events before it; `sent` is done once it was routed, True, or will
    not be, False)."""

    event: pb.Event
    where: str
    request: protocol.Event | None = None
    reply: asyncio.Future | None = None
    due: float = 0.0
    task: asyncio.Future | None = None
    sent: asyncio.Future | None = None


class Ingesting:
    """DecisionService's ingest calls (a part of it: decisions.py, whose `gateway` and
    `client` they call)."""

    async def Ingest(self, request: pb.Event, context) -> pb.IngestAck:
        try:
            check_event(request)
            checked = await self.gateway.checked(
                lambda catalog: requests.event_request(request, catalog),
                self.gateway.timeout(context))
            return await self._ingest(request, checked, "", self.gateway.timeout(context))
        except Exception as exc:
            await abort(context, exc)

    async def _ingest(self, event: pb.Event, checked: tuple[requests.Who, protocol.Event],
                      where: str, timeout_s: float, after: asyncio.Future | None = None,
                      sent: asyncio.Future | None = None, call: Call | None = None
                      ) -> pb.IngestAck:
        """One checked event, its alias resolved first; input errors name the field, prefixed
        with `where` inside a stream. With `after` (the `sent` of the stream's event before
        it), it is routed only once that one was, and `sent` says when it was; `call`: the
        stream's, which it goes unsent with."""
        who, request = checked

        async def apply(customer_id: str) -> protocol.EventAck:
            if after is not None and not await asyncio.shield(after):  # shield: one waiter
                raise NotSent("not sent: an event before it in the stream was not")
            routed = request._replace(customer_id=customer_id, via=who.via(customer_id))
            reply = self.client.enqueue(routed, call)
            if sent is not None:
                sent.set_result(True)
            return await _settled(self.client.settle(routed, await reply))
        try:
            ack = await self.gateway.within(self.gateway.as_customer(who, apply), timeout_s)
        except InputError as exc:
            raise type(exc)(where + exc.field, exc.reason) from None
        finally:
            if sent is not None and not sent.done():
                sent.set_result(False)  # the events behind it are not sent either
        return _ack_out(event, ack, who)

    async def IngestStream(self, request_iterator, context) -> AsyncIterator[pb.IngestAck]:
        """Events go out as they arrive, in the order they were sent; each ack goes back as
        soon as it and every earlier one are done, in order. At most STREAM_WINDOW events wait
        for their acks: past that, reading pauses (gRPC flow control pushes back on the
        sender). An event counts in the gateway's calls in flight from its admission (its room
        checked, before its catalog check, which may wait) until its shard answers, not until
        its ack is read: a caller that reads slowly holds its window, not the gateway's limit.
        The first failing event ends the stream with its status; earlier ones were acked.
        Each event's ack is due within the deadline left when it was read: the caller's, or
        DEFAULT_DEADLINE_S for a stream without one, which lasts for as long as its caller
        keeps it open. Events named by customer id are routed as they are read,
        without a task of their own; an event by alias first resolves the alias, and while it
        does, the events read after it wait for it to be routed (an alias may name the
        customer a later event names by id). Once the stream ends, what of it is not sent yet
        goes unsent, all of it (`Call`). Each event is checked as a unary Ingest is
        (`Gateway.checked`): against the catalog the cluster runs when it is read, not the one
        it ran when the stream opened. One without room in the gateway's calls in flight, or
        in its key's share (`Gateway.check_capacity`), ends the stream RESOURCE_EXHAUSTED with
        the refusal, every event before it acked: the caller sends the rest again on a new
        stream (NO_ROOM says so). A gateway serves at most INGEST_STREAMS of them (and
        of those, at most INGEST_STREAMS_PER_KEY of one key and _PER_HOST from one host: past
        any, RESOURCE_EXHAUSTED), and ends one whose caller sent no event for
        INGEST_STREAM_IDLE_S (DEADLINE_EXCEEDED, once every event sent was acked), or kept
        its whole window unacked for INGEST_STREAM_STALL_S (RESOURCE_EXHAUSTED: its reader
        paused with STREAM_WINDOW events waiting while an ack's write was held by flow
        control, `_Stall`; the acks written before it reach the caller, then the status; its
        place is freed once the status is out)."""
        try:
            callers = self.gateway.ingest_streams.admit(caller(), host_of(context.peer()))
        except Busy as exc:
            await abort(context, exc)
        pending: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)
        call = Call()
        handler = asyncio.current_task()
        stall = _Stall(lambda why: _end_stalled(context, handler, why))
        reader = asyncio.ensure_future(
            self._read(request_iterator, context, pending, call, stall))
        failure = None
        try:
            async with asyncio.timeout(None if context.time_remaining() is None else
                                       self.gateway.timeout(context)):
                while (item := await pending.get()) is not None:
                    ack = await self._ack(item)
                    stall.writing = True  # until the caller's reads make room for it
                    if stall.paused:
                        stall.since = stall.now()
                    yield ack
                    stall.writing, stall.since = False, None
        except Exception as exc:
            failure = exc
        finally:  # also when the caller went away
            stall.close()
            reader.cancel()
            while not pending.empty():
                self._drop(pending.get_nowait())
            call.give_up()
            if stall.ending is None:
                self.gateway.ingest_streams.release(callers)
            else:  # its place is held until the status is out: read, or the caller gone
                stall.ending.add_done_callback(
                    lambda _: self.gateway.ingest_streams.release(callers))
        if failure is not None:
            await abort(context, _of_many(failure))

    async def _read(self, request_iterator, context, pending: asyncio.Queue, call: Call,
                    stall: _Stall) -> None:
        """Route each event of a stream as it arrives, into `pending`; then None. An event
        that fails its checks (or a failure to read, or a wait for the next event past
        INGEST_STREAM_IDLE_S) goes in as the exception, which ends the stream in its turn,
        after the events before it. While it waits for room in a full `pending` (the
        caller's whole window unacked) with an ack's write held, `stall` runs, the wait to
        put what ends the stream included (whether the caller half-closed must not lengthen
        it); and once that is in, while any ack's write is held, for INGEST_STREAM_IDLE_S."""
        async def put(item: _Pending | Exception | None) -> None:
            if pending.full():  # the caller's window, all of it unacked
                await stall.paused_on(pending.put(item))
            else:
                pending.put_nowait(item)

        async def last(item: Exception | None) -> None:  # what ends the stream, in its turn
            await put(item)
            stall.reader_done()  # before the handler can take `item`: no await since the put

        n = 0
        latest: asyncio.Future | None = None  # the `sent` of the last event routed by a task
        idle = IdleLimit(INGEST_STREAM_IDLE_S, IDLE)
        try:
            while (event := await idle.next(request_iterator)) is not None:
                where = f"events[{n}]."
                n += 1
                try:
                    check_event(event)
                    item = await self._checked_event(event, where, context, latest, call)
                except Exception as exc:
                    await last(exc)
                    return
                if item.sent is not None:
                    latest = item.sent
                try:
                    await put(item)
                except asyncio.CancelledError:
                    self._drop(item)
                    raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await last(exc)
            return
        finally:
            idle.close()
        await last(None)

    async def _checked_event(self, event: pb.Event, where: str, context,
                             last: asyncio.Future | None, call: Call) -> _Pending:
        """A stream's event checked (`Gateway.checked`) and routed (`_route`), counted in
        flight from before its check (`Gateway.reserve`), which may wait for a catalog."""
        try:
            key = self.gateway.reserve()
        except Busy as refused:  # no room: no later event is read (`_read`)
            raise Busy(f"{NO_ROOM.format(event=where.rstrip('.'))}{refused}") from None
        try:
            checked = await self.gateway.checked(
                lambda catalog: requests.event_request(event, catalog, where),
                self.gateway.timeout(context))
            return self._route(event, checked, where, context, last, call, key)
        except BaseException:  # not routed (cancelled included): its count goes
            self.gateway.uncount(key)
            raise

    def _route(self, event: pb.Event, checked: tuple[requests.Who, protocol.Event], where: str,
               context, last: asyncio.Future | None, call: Call, key: str | None) -> _Pending:
        """Send a checked event on its way: now, when it names its customer and every event
        before it was routed (`last`, the `sent` of the latest one routed by a task, is done
        and True); else by a task, behind that one. `_ack` waits for its ack. Counted in
        flight as `key`'s already (`Gateway.reserve`), it counts until its shard answers,
        read or not, or until its task ends."""
        who, request = checked
        if who.alias_key is not None or not (last is None or (last.done() and last.result())):
            sent = asyncio.get_running_loop().create_future()
            return _Pending(event, where, task=self.gateway.counted_task(self._ingest(
                event, checked, where, self.gateway.timeout(context), last, sent, call), key),
                sent=sent)
        due = asyncio.get_running_loop().time() + self.gateway.timeout(context)
        reply = self.client.enqueue(request, call)
        self.gateway.until_done(reply, key)  # nothing raises after: `_checked_event`
        return _Pending(event, where, request, reply, due)

    async def _ack(self, item: _Pending | Exception) -> pb.IngestAck:
        if isinstance(item, Exception):
            raise item
        if item.task is not None:
            return await item.task
        try:
            async with asyncio.timeout_at(item.due):  # past it, the reply is cancelled
                return _ack_out(item.event, await _settled(
                    self.client.settle(item.request, await item.reply)), None)
        except InputError as exc:
            raise type(exc)(item.where + exc.field, exc.reason) from None

    def _drop(self, item: _Pending | Exception | None) -> None:
        """An event whose ack nobody will wait for."""
        if isinstance(item, _Pending):
            if item.task is not None:
                item.task.cancel()
            else:  # no longer awaited: counted no longer (a reply come already was)
                item.reply.cancel()

    async def IngestBatch(self, request: pb.EventBatch, context) -> pb.EventBatchAck:
        """Check every event and resolve the aliases they name; then route them all at once,
        in the caller's order (without a task per event), or refuse the batch whole before
        any is routed (RESOURCE_EXHAUSTED: a shard's queue in this gateway has no room for its
        share: a retry must not apply some events twice; INVALID_ARGUMENT: its answer could
        pass MAX_ANSWER_BYTES, `answerbound`); and gather the acks in order. Checks
        and acks go CHUNK events at a time, the event loop's other calls served between. Once
        it ends, what of it is not sent yet goes unsent, all of it (`Call`)."""
        try:
            if len(request.events) > BATCH_LIMIT:
                raise InputError("events", f"at most {BATCH_LIMIT} events per batch, got "
                                           f"{len(request.events)}")
            for channel in {event.channel for event in request.events}:
                check_channel(channel)
            if any(event.decide_placement for event in request.events):
                require_scope("decide", DECIDING)
            checked, decisions = await self._checked(request.events, context)
            answerbound.check(request, checked, decisions)
            # all or none: each event is a call, counted until it answers, however it ends
            key = self.gateway.reserve(len(checked))
        except (Denied, InputError, Busy, TimeoutError) as exc:
            await abort(context, exc)
        call = Call()
        try:
            async with asyncio.timeout(self.gateway.timeout(context)):
                routed = await self._resolved(checked)
                self.client.check_room(routed)  # no await until all are enqueued
                replies = [self.client.enqueue(event, call) for event in routed]
                answer = pb.EventBatchAck()  # each ack written in place (`_ack_into`)
                for n, (event, (who, _), routed_event, reply) in enumerate(zip(
                        request.events, checked, routed, replies)):
                    if n and not n % CHUNK:
                        await asyncio.sleep(0)
                    try:
                        ack = await _settled(self.client.settle(routed_event, await reply))
                    except InputError as exc:
                        raise type(exc)(f"events[{n}].{exc.field}", exc.reason) from None
                    _ack_into(answer.acks.add(), event, ack, who)
                return answer
        except Exception as exc:
            failure = exc
        finally:  # also when the call is cancelled: the caller went away, or its deadline passed
            self.gateway.uncount(key, len(checked))
            call.give_up()
        await abort(context, _of_many(failure) if len(checked) > 1 else failure)

    async def _checked(self, events, context
                       ) -> tuple[list[tuple[requests.Who, protocol.Event]], int]:
        """A batch's events checked, CHUNK at a time; and the most bytes the decisions they
        ask for add to the batch's answer, each chunk's by the catalog that checked it
        (`answerbound.decision_bytes`)."""
        def check(catalog: CompiledCatalog, start: int
                  ) -> tuple[list[tuple[requests.Who, protocol.Event]], int]:
            chunk = [requests.event_request(event, catalog, f"events[{n}].")
                     for n, event in enumerate(events[start:start + CHUNK], start)]
            return chunk, answerbound.decision_bytes(catalog, chunk)

        checked: list[tuple[requests.Who, protocol.Event]] = []
        decisions = 0
        for start in range(0, len(events), CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk, most = await self.gateway.checked(lambda catalog: check(catalog, start),
                                                     self.gateway.timeout(context))
            checked += chunk
            decisions += most
        return checked, decisions

    async def _resolved(self, checked: list[tuple[requests.Who, protocol.Event]]
                        ) -> list[protocol.Event]:
        """The events, each naming its customer: the aliases they name resolved (each once,
        all at once), each such event carrying its alias's anonymous id (`Who.via`)."""
        keys = list({who.alias_key for who, _ in checked if who.alias_key is not None})
        customers = dict(zip(keys, await asyncio.gather(*map(self.client.resolve_key, keys))))
        return [event if who.alias_key is None else
                event._replace(customer_id=customers[who.alias_key],
                               via=who.via(customers[who.alias_key])) for who, event in checked]


class _Stall(WaitLimit):
    """A stream's stall clock (INGEST_STREAM_STALL_S): it runs while its caller is held back
    by its own window, the reader waiting for room in a full `pending` (`paused`), and by flow
    control, an ack's write held (`writing`). A caller with fewer than STREAM_WINDOW events
    unacked is never cut, however slowly it reads: a write alone waits whenever the caller
    reads less than its HTTP/2 window (~32 KB) in a stall time. At expiry `end()` ends the
    stream; `ending` is then its status's task."""

    def __init__(self, end: Callable[[str], asyncio.Future]) -> None:
        super().__init__(INGEST_STREAM_STALL_S, self._expire)
        self._end = end
        self.writing = self.paused = self._done = False
        self.ending: asyncio.Future | None = None

    def _expire(self) -> None:
        self.ending = self._end(UNREAD if self._done else STALLED)

    def now(self) -> float:
        return self._loop.time()

    def reader_done(self) -> None:
        """The reader reads no more: the caller ended its events, sent one that failed, or
        sent none for INGEST_STREAM_IDLE_S; and what ends the stream is in `pending` (a wait
        for room to put it was a stall, as any). A held write is timed from here, for
        INGEST_STREAM_IDLE_S: a caller that stops sending and reads its acks later
        goes on, one that neither sends nor reads (a hung client keeping its connection) no
        longer holds the stream, its handler parked at a write, for as long as it lives."""
        self.paused = self._done = True
        if self.writing:
            self.since = self.now()
        self.restart(INGEST_STREAM_IDLE_S)

    async def paused_on(self, put: Awaitable[None]) -> None:
        """The reader's wait for room (`put`), timed while an ack's write is held too."""
        self.paused = True
        if self.writing:
            self.since = self.now()
        try:
            await put
        finally:
            self.paused, self.since = False, None


def _end_stalled(context, handler: asyncio.Task, why: str) -> asyncio.Future:
    """End a stream whose caller stopped reading its acks, its `handler` (grpc's task) held
    at a write that flow control keeps waiting. The status (RESOURCE_EXHAUSTED, `why`) is
    sent from a task of its own: it goes out behind the acks written, which the caller reads
    first (grpc 1.85, measured). Then the handler is cancelled, as the write may wait for as
    long as the caller keeps its connection (a cancel alone would send it no status): the
    loop closes the stream's generator, whose `finally` frees its window and calls at once,
    and its place once the returned task is done: the status is out, read or its caller gone
    (until then the call's HTTP/2 stream and grpc's tasks stay, ~385 KB: a key's streams so
    ended count against INGEST_STREAMS_PER_KEY still, or their callers could pile them up)."""
    ending = asyncio.get_running_loop().create_task(abort(context, Busy(why)),
                                                    name=ENDING)
    ending.add_done_callback(lambda done: done.cancelled() or done.exception())  # AbortError
    asyncio.get_running_loop().call_soon(handler.cancel)  # once the status is on its way:
    # the task's first step sends it, and the loop runs it first
    return ending


def check_event(event: pb.Event) -> None:
    """The key may send the event: its channel, and the decision it asks for, if any."""
    check_channel(event.channel)
    if event.decide_placement:
        require_scope("decide", DECIDING)


def _ack_out(event: pb.Event, ack: protocol.EventAck, who: requests.Who | None
             ) -> pb.IngestAck:
    out = pb.IngestAck()
    _ack_into(out, event, ack, who)
    return out


def _ack_into(out: pb.IngestAck, event: pb.Event, ack: protocol.EventAck,
              who: requests.Who | None) -> None:
    """The ack written into `out`, an empty IngestAck, in place: an IngestBatch's are its
    answer's own (each built apart and copied in, its decision copied into it too, cost 2 us
    an event more: issue 17). Its decision names the customer to a key without profile:read
    as the event did (`requests.alias_answered` of `who`; None: an event by customer id, whose
    Who is made only for a decision)."""
    out.event_id, out.sequence, out.duplicate = event.event_id, ack.sequence, ack.duplicate
    if ack.decision is not None:
        wire.decision_into(out.decision, ack.decision)
        answered = requests.alias_answered(who or requests.Who(event.customer_id, None))
        if answered is not None:
            out.decision.customer_id = answered


async def _settled(settling: Awaitable[protocol.EventAck]) -> protocol.EventAck:
    """A routed event's ack; its shard's refusal as ShardRefused."""
    try:
        return await settling
    except InputError as exc:
        raise ShardRefused(exc.field, exc.reason) from None


def _of_many(failure: Exception) -> Exception:
    """The failure of one event that ends a call of several (a batch, a stream): the events
    around it may have been applied, so one that was not sent (NotSent, NotCarried) does not
    make the call "not applied"; the caller is told it may have been, and that of a refusal
    by the event's shard too (INVALID_ARGUMENT otherwise says that nothing was applied). One
    left unsent as an earlier event of its call failed says so (and that nothing after that
    one was applied)."""
    if isinstance(failure, (NotSent, NotCarried)) and not isinstance(failure, EarlierFailed):
        return Unavailable(str(failure))
    if isinstance(failure, ShardUnavailable) and str(failure) == protocol.BEING_FORGOTTEN:
        return ShardUnavailable(FORGOTTEN_IN_CALL)
    if isinstance(failure, ShardRefused):
        return InputError(failure.field, failure.reason + ROUTED)
    return failure
