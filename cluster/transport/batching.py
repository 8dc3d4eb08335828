"""KairosClient's calls to its shards (a part of it: client.py), over one link to each
(links.py): a call goes out as soon as one is free, carrying whatever queued for the shard
meanwhile (no added latency at low load, round trips amortized under load), numbered in the
link's session; a batch that never left goes again, once. A route key's requests in two calls
in flight to one shard keep their order because the backend's calls to a shard share one
connection (RayBackend: one per shard): were the earlier one's never sent and the later one's
to reach a restarted shard, which starts a session it does not know at the lowest number it
gets, the later would be applied first. The client queues requests on the links (`_send`),
settles their replies (`_answered`) and takes back those that must wait in their lane
(`_behind`)."""
from __future__ import annotations

import asyncio
import logging
import uuid

from kairos.cluster import protocol
from kairos.cluster.settings import CLIENT_BATCH_LIMIT, CLIENT_BATCH_WINDOW_S
from kairos.cluster.transport.backend import NotCarried, NotSent, Unavailable
from kairos.cluster.transport.lanes import Failed, Item, Undelivered
from kairos.cluster.transport.links import ShardLink

log = logging.getLogger("kairos.client")
# Replies that may be a shard's refusal: of a whole batch (it then refuses the session's later
# batches) or of a request (then the session's later requests for that customer: see
# shard/refusals.py), so those not yet sent go in a fresh session.
_REFUSALS = frozenset((protocol.Busy, protocol.Unavailable))


class Batching:
    """KairosClient's calls to its shards (a part of it: client.py)."""

    async def _pump(self, link: ShardLink) -> None:
        """Send whatever queued for the shard as one call, whenever a call slot is free. Under
        load (another call to the shard still in flight) a call first waits up to
        CLIENT_BATCH_WINDOW_S for more requests, so the round trip is paid per batch; at low
        load (nothing in flight) it goes at once."""
        while True:
            await link.wake.wait()
            link.wake.clear()
            while link.queue:
                await link.slots.acquire()
                if link.calls and len(link.queue) < CLIENT_BATCH_LIMIT:
                    await asyncio.sleep(CLIENT_BATCH_WINDOW_S)
                batch = self._sendable([link.queue.popleft() for _ in
                                        range(min(len(link.queue), CLIENT_BATCH_LIMIT))])
                if not batch:
                    link.slots.release()
                    continue
                seq, link.seq = link.seq, link.seq + 1
                link.calls += 1
                asyncio.get_running_loop().create_task(
                    self._call_shard(link, link.session, seq, batch))

    def _sendable(self, batch: list[Item]) -> list[Item]:
        """The batch without the requests given up on (`Item.given_up`: under overload those
        would only delay the live ones; never sent, they had no effect) and without those
        whose lane has an earlier request waiting to go again (`Lane.moved`: its batch never
        left, or MOVED answered it): queued before it failed, they would be applied ahead of
        it, so they go back to wait behind it (`_behind`)."""
        lanes = self._lanes
        if not any(item.given_up() or lanes[item.request.partition].moved for item in batch):
            return batch
        sendable = []
        for item in batch:
            if item.given_up():
                self._answered(item, item.unsent())
            elif lanes[item.request.partition].moved:
                self._behind(item)
            else:
                sendable.append(item)
        return sendable

    def _resendable(self, link: ShardLink, flight: list) -> list[Item]:
        """A batch that never left, going again as a fresh session's first, less what
        `_sendable` takes out and what must wait for a call in flight (`split_behind`);
        emptied, it goes all the same, for the fresh session's next batches."""
        batch, behind = link.split_behind(flight, self._sendable(flight[2]))
        for item in behind:
            self._behind(item)
        return batch

    async def _call_shard(self, link: ShardLink, session: str, seq: int,
                          batch: list[Item]) -> None:
        # what was given up, or fell behind a request of its lane, since the pump took it
        # stays unsent (a refusal gives up the rest of its call: sent now, it would overtake
        # the refused); emptied, it goes all the same unless renumbered: the shard waits for it
        batch = self._sendable(batch)
        if link.session != session:  # a failed call dropped the session since it was numbered
            # sent in it, behind the failed batch, it would wait at the shard for that in vain;
            # not sent yet, it goes as the fresh session's next (in the order numbered still:
            # calls start in the order the pump made them)
            if not batch:  # no number taken in the fresh session, so none left unsent
                link.calls -= 1
                link.slots.release()
                return
            session, seq, link.seq = link.session, link.seq, link.seq + 1
        flight = [session, seq, batch]
        link.sent.append(flight)
        try:
            for attempt in range(2):
                try:
                    replies = await self.backend.send(link.name, session, seq,
                                                      [item.request for item in batch],
                                                      [item.routed for item in batch])
                    break
                except NotSent as exc:
                    if attempt or link.session != session:  # != : an earlier batch failed
                        raise
                    fresh = link.resend_as(session, seq, exc.gapped)
                    if fresh[0] != session:  # not ordered at the shard after the other calls
                        batch = flight[2] = self._resendable(link, flight)
                    session, seq = flight[:2] = fresh
        except Exception as exc:
            # The shard died or is restarting (or the backend failed): requests may or may
            # not have been applied, so they fail rather than being re-sent; later ones start
            # a fresh session (unless another failed call of this session started it already).
            # A batch the transport cannot carry fails too, and an empty one takes its number,
            # or the session's later batches (numbered already) would wait for it at the shard.
            if not isinstance(exc, Unavailable):
                log.exception("sending a batch to %s failed", link.name)
            if link.session == session and not (isinstance(exc, NotCarried) and
                                                await self._skip(link.name, session, seq)):
                link.session, link.seq = uuid.uuid4().hex, 0
            reply = (Undelivered(str(exc)) if isinstance(exc, NotSent)
                     else Failed(type(exc) if isinstance(exc, Unavailable) else Unavailable,
                                  str(exc)))
            replies = [reply] * len(batch)
        finally:
            link.calls -= 1
            link.slots.release()
            link.sent.remove(flight)
        if any(type(reply) in _REFUSALS for reply in replies):
            if link.session == session:
                link.session, link.seq = uuid.uuid4().hex, 0
            link.refused_behind(session, seq)
        for item, reply in zip(batch, replies):
            self._answered(item, reply)

    async def _skip(self, shard: str, session: str, seq: int) -> bool:
        """Send an empty batch as `seq` of `session`; whether it was answered."""
        try:
            await self.backend.send(shard, session, seq, [], [])
            return True
        except Exception:  # the session is started afresh instead
            return False
