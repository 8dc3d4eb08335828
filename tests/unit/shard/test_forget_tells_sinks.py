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


def told(pushes) -> list[tuple[str, Unwatched]]:
    return sorted((p.sink, p.decision) for p in pushes if isinstance(p.decision, Unwatched))


def test_a_forget_tells_each_sink_that_watched_the_customer_by_any_id(compiled):
    s = shard(compiled)
    s.process([event("zed", "app_open", T0)])
    s.process([watch("zed", "gw-a", "web", "hero"), watch("zed", "gw-b", "web", "hero"),
               watch("zed", "gw-b", "push"),
               # a stream on an alias's anonymous id, linked into the customer since
               watch("zed", "gw-c", "web", "hero")._replace(by="~cookie:x")])
    s.watch_channel("gw-d", "web", "hero")  # every customer's: it goes on
    _, pushes = s.process([event("ana", "app_open", T0 + 1), forget("zed")])
    assert told(pushes) == [("gw-a", Unwatched("zed", ("zed",))),
                            ("gw-b", Unwatched("zed", ("zed",))),
                            ("gw-c", Unwatched("zed", ("zed", "~cookie:x")))]
    kinds = [isinstance(p.decision, Unwatched) for p in pushes]
    assert kinds[0] is False and kinds == sorted(kinds)  # after the round's (ana's) pushes
    assert not told(s.process([event("ana", "app_open", T0 + 2)])[1])  # told once


def test_a_forget_that_finds_no_watches_tells_nobody(compiled):
    s = shard(compiled)
    s.process([event("zed", "app_open", T0), watch("ana", "gw-a", "web", "hero")])
    assert s.process([forget("zed")])[1] == []
    s.process([watch("zed", "gw-a", "web", "hero")])
    assert told(s.process([forget("zed")])[1]) == [("gw-a", Unwatched("zed", ("zed",)))]
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


def test_the_word_goes_after_the_pushes_before_it_and_no_push_of_its_view_replaces_it():
    """Queued behind a call in flight, with pushes of the customer's view before and after it
    (a channel watch's, of a customer re-created under the id): the next call carries them
    all, the word last."""
    calls: list[list] = []
    released = asyncio.Event()

    class Sink:
        async def deliver(self, decisions: list) -> None:
            calls.append(decisions)
            if len(calls) == 1:
                await released.wait()

    def pushed(n: int) -> Decision:
        return Decision(f"d{n}", "zed", "web", "hero", ("x",), "v1", n)

    async def main() -> None:
        pushes = Pushes("s0", lambda name: Sink(), lambda names: asyncio.sleep(0))
        pushes.push("gw-b", [pushed(1)])
        await asyncio.sleep(0)  # in flight
        word = Unwatched("zed", ("zed",))
        pushes.push("gw-b", [pushed(2), word])
        pushes.push("gw-b", [pushed(3)])
        released.set()
        while len(calls) < 2:
            await asyncio.sleep(0)
    asyncio.run(asyncio.wait_for(main(), 10))
    assert calls == [[pushed(1)], [pushed(3), Unwatched("zed", ("zed",))]]
