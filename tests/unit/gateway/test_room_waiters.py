"""A stream's event without room in flight waits in a queue on the gateway's accounting
(review of 7999adf, H1): it polled (`_room`, every 1-50 ms), and 4,096 waiting streams took
90-97% of a core. Now nothing runs while no call ends; each call that ends wakes one waiter
whose key would be admitted, first come first within a key; a waiter still refused goes back to
its key's head; one cancelled or timed out leaves the queue. On `Gateway` and `ingesting._room`
directly, the real check counted."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.gateway import auth, calls, ingesting
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.transport.client import Busy

LIMIT = 40


class Waiting:
    """A gateway at its limit (calls of no key), its checks counted, and `n` streams' events
    waiting for room in `_room`, each counting its call once admitted (as a stream does)."""

    def __init__(self, n: int) -> None:
        auth._caller.set(None)
        self.gateway = Gateway("g", None, None)
        self.gateway.count(None, LIMIT)
        self.checks = 0
        self.admitted: list[int] = []
        refused, check = _refusal(self.gateway), self.gateway.check_capacity

        def counted(adding: int = 1) -> None:
            self.checks += 1
            check(adding)
        self.gateway.check_capacity = counted
        self.tasks = [asyncio.ensure_future(self._event(i, refused)) for i in range(n)]

    async def _event(self, i: int, refused: Busy) -> None:
        await ingesting._room(self.gateway, refused)
        self.gateway.count(None)
        self.admitted.append(i)


def _refusal(gateway: Gateway) -> Busy:
    try:
        gateway.check_capacity()
    except Busy as exc:
        return exc
    raise AssertionError("not refused")


async def _turns(n: int = 20) -> None:
    """Let the loop run what is ready (a polling waiter's 1 ms sleeps included)."""
    for _ in range(n):
        await asyncio.sleep(0.001)


@pytest.fixture(autouse=True)
def limited(monkeypatch) -> None:
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 60.0)


def test_waiting_events_cost_nothing_until_calls_end_then_go_in_order():
    async def main() -> None:
        waiting = Waiting(100)
        await _turns()
        assert waiting.checks == 0  # polled: each waiter looked every 1-50 ms
        waiting.gateway.uncount(None, 3)
        await _turns()
        assert waiting.admitted == [0, 1, 2] and waiting.checks == 3
        waiting.gateway.uncount(None)
        await _turns()
        assert waiting.admitted == [0, 1, 2, 3] and waiting.checks == 4
        assert waiting.gateway.inflight == LIMIT
        for task in waiting.tasks:
            task.cancel()
        await asyncio.gather(*waiting.tasks, return_exceptions=True)
        assert not waiting.gateway._waiters
    asyncio.run(main())


def test_a_key_past_its_share_does_not_hold_up_another_keys_waiter(monkeypatch):
    """web holds 35 of 40 (past its share), app 1 (its floor); web's stream event waits, then
    app's. app's call ends: app holds none, its event would be admitted. In one queue for all,
    the wake went to web's event, first, refused again, and app's slept on until its stream
    ended (KAIROS_INGEST_STREAM_STALL_S); now app's is woken, web's waits on."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 0.5)
    keys = {key.label: key for _, key in Auth.load("""keys:
  - {key: 'web-ingest-decide-0123456789', name: web, scopes: [ingest]}
  - {key: 'app-ingest-decide-0123456789', name: app, scopes: [ingest]}
""")._keys}

    async def event(gateway: Gateway, label: str) -> str:
        auth._caller.set(keys[label])
        try:
            await ingesting._room(gateway, _refusal(gateway))
        except Busy:
            return "ended"
        return "admitted"

    async def main() -> None:
        gateway = Gateway("g", None, None)
        gateway.count("web", 35)
        gateway.count("app")
        web = asyncio.ensure_future(event(gateway, "web"))
        await _turns(2)
        app = asyncio.ensure_future(event(gateway, "app"))
        await _turns(2)
        gateway.uncount("app")
        assert await asyncio.wait_for(app, 0.4) == "admitted"
        assert await web == "ended" and not gateway._waiters
    asyncio.run(main())


def test_a_waiter_refused_when_woken_keeps_its_turn():
    """The call that ended is replaced before the woken waiter looks (a unary call took the
    room): it is refused, and waits again first; the next call's end is its."""
    async def main() -> None:
        waiting = Waiting(3)
        await _turns()
        waiting.gateway.uncount(None)
        waiting.gateway.count(None)
        await _turns()
        assert waiting.admitted == [] and waiting.checks == 1
        waiting.gateway.uncount(None)
        await _turns()
        assert waiting.admitted == [0] and waiting.checks == 2
        for task in waiting.tasks:
            task.cancel()
        await asyncio.gather(*waiting.tasks, return_exceptions=True)
    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue_and_passes_on_its_wake():
    async def main() -> None:
        waiting = Waiting(3)
        await _turns()
        waiting.tasks[1].cancel()
        await _turns()
        assert len(waiting.gateway._waiters[None]) == 2
        waiting.gateway.uncount(None)  # wakes the first, cancelled before it looks
        waiting.tasks[0].cancel()
        await _turns()
        assert waiting.admitted == [2] and not waiting.gateway._waiters
    asyncio.run(main())


def test_a_waiter_without_room_for_the_stall_time_is_refused(monkeypatch):
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 0.05)

    async def main() -> None:
        waiting = Waiting(2)
        [ended, _] = await asyncio.gather(*waiting.tasks, return_exceptions=True)
        assert str(ended).startswith("gateway g has 40 calls in flight; the stream's next "
                                     "event waited 0.05 s for room")
        assert not waiting.gateway._waiters and waiting.admitted == []
    asyncio.run(main())
