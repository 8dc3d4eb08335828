"""A forget tells each sink that watched the customer that its watches ended (`Unwatched`,
after the round's pushes, naming every id its registrations follow the customer by), so the
streams on gateways other than the one that served it end too; a forget that finds no watch
tells nobody, and one replayed from the journal tells nobody again."""
from __future__ import annotations

import asyncio

from kairos.core.decision import Decision

from kairos.cluster.shard.sinks import Pushes
from kairos.cluster.shard.watches import Unwatched
from tests.unit.shard.test_shard import T0, Clock, event, forget, shard, watch
from tests.unit.shard.test_unseen_restart import restarted


def told(pushes) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((p.sink, p.decision.customer_id, p.decision.ids) for p in pushes
                  if isinstance(p.decision, Unwatched))


def test_a_forget_tells_each_sink_that_watched_the_customer_by_any_id(compiled):
    s = shard(compiled, clock=Clock())
    s.process([event("zed", "app_open", T0)])
    s.process([watch("zed", "gw-a", "web", "hero"), watch("zed", "gw-b", "web", "hero"),
               watch("zed", "gw-b", "push"),
               # a stream on an alias's anonymous id, linked into the customer since
               watch("zed", "gw-c", "web", "hero")._replace(by="~cookie:x")])
    s.watch_channel("gw-d", "web", "hero")  # every customer's: it goes on
    _, pushes = s.process([event("ana", "app_open", T0 + 1), forget("zed")])
    assert told(pushes) == [("gw-a", "zed", ("zed",)), ("gw-b", "zed", ("zed",)),
                            ("gw-c", "zed", ("zed", "~cookie:x"))]
    # when it was forgotten: a gateway ends no watch it registered after (a late word)
    assert {p.decision.at for p in pushes if isinstance(p.decision, Unwatched)} == {s.ctx.clock()}
    kinds = [isinstance(p.decision, Unwatched) for p in pushes]
    assert kinds[0] is False and kinds == sorted(kinds)  # after the round's (ana's) pushes
    assert not told(s.process([event("ana", "app_open", T0 + 2)])[1])  # told once


def test_a_forget_that_finds_no_watches_tells_nobody(compiled):
    s = shard(compiled)
    s.process([event("zed", "app_open", T0), watch("ana", "gw-a", "web", "hero")])
    assert s.process([forget("zed")])[1] == []
    s.process([watch("zed", "gw-a", "web", "hero")])
    assert told(s.process([forget("zed")])[1]) == [("gw-a", "zed", ("zed",))]
    assert s.process([forget("zed")])[1] == []  # a retry: its watches went with the first


def test_a_forget_replayed_from_the_journal_tells_nobody_again(compiled):
    """The sinks were told when it happened; what they hold now may be streams that came
    since, on registrations the replay keeps."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([event("zed", "app_open", T0), watch("zed", "gw-a", "web", "hero")])
    assert told(s.process([forget("zed")])[1])
    s.process([watch("zed", "gw-a", "web", "hero")])  # a stream that came since
    r = restarted(s, clock)
    assert "zed" in r.watches.by_customer  # the replay keeps the later registration
    assert not told(r.process([event("ana", "app_open", T0 + 5)])[1])


class Sink:
    """Takes each call (`calls`); the first waits for `released`; a call carrying a word
    fails with `words_fail` (an older gateway, which cannot unpickle it)."""

    def __init__(self, words_fail: Exception | None = None) -> None:
        self.calls: list[list] = []
        self.released = asyncio.Event()
        self.words_fail = words_fail

    async def deliver(self, decisions: list) -> None:
        self.calls.append(decisions)
        if len(self.calls) == 1:
            await self.released.wait()
        if self.words_fail and any(isinstance(d, Unwatched) for d in decisions):
            raise self.words_fail


def pushed(n: int) -> Decision:
    return Decision(f"d{n}", "zed", "web", "hero", ("x",), "v1", n)


WORD = Unwatched("zed", ("zed",), T0)
GATEWAY = "gw#b1"  # a gateway's sink: its actor's name and incarnation


async def queued_behind_a_call(sink: Sink, name: str = GATEWAY) -> Pushes:
    """Pushes to `sink`: one in flight, then pushes of the customer's view before and after
    its word (a channel watch's, of a customer re-created under the id)."""
    pushes = Pushes("s0", lambda _: sink, lambda names: asyncio.sleep(0))
    pushes.push(name, [pushed(1)])
    await asyncio.sleep(0)  # in flight
    pushes.push(name, [pushed(2), WORD])
    pushes.push(name, [pushed(3)])
    return pushes


async def sent(sink: Sink, calls: int) -> None:
    sink.released.set()
    while len(sink.calls) < calls:
        await asyncio.sleep(0)
    for _ in range(10):  # none more
        await asyncio.sleep(0)


def test_the_word_goes_after_the_pushes_before_it_in_a_call_of_its_own():
    """No push of its view replaces it; a sink that cannot take it loses no push with it."""
    sink = Sink()

    async def main() -> None:
        await queued_behind_a_call(sink)
        await sent(sink, 3)
    asyncio.run(asyncio.wait_for(main(), 10))
    assert sink.calls == [[pushed(1)], [pushed(3)], [WORD]]


def test_a_gateway_that_cannot_take_the_word_loses_only_the_word_said_in_one_line(caplog):
    sink = Sink(words_fail=AttributeError("Can't get attribute 'Unwatched'"))

    async def main() -> None:
        pushes = await queued_behind_a_call(sink)
        await sent(sink, 3)
        pushes.push(GATEWAY, [pushed(4)])  # the sink's pushes go on
        await sent(sink, 4)
    asyncio.run(asyncio.wait_for(main(), 10))
    assert sink.calls[3] == [pushed(4)]
    failed = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert [(r.levelname, r.exc_info) for r in failed] == [("WARNING", None)]
    assert "not told" in failed[0].getMessage()


def test_a_users_own_sink_gets_no_word():
    """An actor registered with KairosClient.watch (no incarnation in its name) takes
    decisions only."""
    sink = Sink()

    async def main() -> None:
        await queued_behind_a_call(sink, "my-sink")
        await sent(sink, 2)
    asyncio.run(asyncio.wait_for(main(), 10))
    assert sink.calls == [[pushed(1)], [pushed(3)]]


def test_a_flush_waits_for_the_pushes_queued_behind_a_call_of_words():
    """The moving customer's push goes in the call after the word's: the flush waits for
    that one to end, not the word's."""
    ended: list[list] = []

    class Slow:
        async def deliver(self, decisions: list) -> None:
            await asyncio.sleep(0.02)
            ended.append(decisions)

    async def main() -> list:
        pushes = Pushes("s0", lambda _: Slow(), lambda names: asyncio.sleep(0))
        pushes.push(GATEWAY, [pushed(1), WORD])
        await asyncio.sleep(0)  # the push in flight, the word next
        pushes.push(GATEWAY, [pushed(2)])
        return await pushes.flush(lambda c: c == "zed", within_s=5)
    assert asyncio.run(asyncio.wait_for(main(), 10)) == []  # none dropped
    assert ended == [[pushed(1)], [WORD], [pushed(2)]]  # all landed before the flush ended
