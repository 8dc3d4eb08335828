"""A forget of an alias's anonymous customer, by the alias or by the anonymous id, racing a
link of the alias: once the forget answers, the visitor's events it forgot are nowhere, the
customer the link names included, unless (by id) the link merged them before the forget
began (identity.py: the sagas; sagas.py: `_forget_first`)."""
from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator

from kairos.cluster.identity import alias_key, anonymous_id
from kairos.cluster.protocol import Resolve
from kairos.cluster.transport.client import KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_identity_forget import LINK_STEPS, advance
from tests.unit.shard.test_shard import T0

VISITS = 3  # the visitor's events under the alias, before the link
MERGE_STEP = 3  # the link's Merge: its fourth step (client.link_steps)


async def forget_by_alias(client: KairosClient, key: str) -> AsyncIterator[bool]:
    """ForgetCustomer by the alias, as the gateway runs it: the forget's own resolution,
    then the forget of whom it named."""
    target = await client._value(Resolve(key=key, for_forget=True))
    yield False
    async for found in client.forget_steps(target, key):
        yield found


def schedules(forget_steps: int) -> list[tuple[str, ...]]:
    n = LINK_STEPS + forget_steps
    return [tuple("L" if i in link_at else "F" for i in range(n))
            for link_at in itertools.combinations(range(n), LINK_STEPS)]


async def interleave(sagas: dict[str, AsyncIterator[bool]], order: tuple[str, ...]) -> None:
    """The sagas' steps in `order` (one that ended early gives its turns to the other),
    then each one's rest."""
    for who in order:
        if not sagas:
            return
        if who not in sagas:
            who = next(iter(sagas))
        if not await advance(sagas[who]):
            sagas.pop(who)
    for steps in sagas.values():
        while await advance(steps):
            pass


def merged_before_forget(order: tuple[str, ...]) -> bool:
    """Whether the link's Merge comes before the forget's Forget (by id: its first step)."""
    return order.index("F") > [i for i, who in enumerate(order) if who == "L"][MERGE_STEP]


def visitor_reached_customer(order: tuple[str, ...]) -> bool:
    """Whether, by the alias, the customer may hold the visitor's events the forget erases:
    the link's Link came before the forget's resolution (the forget is of the customer), or
    its Merge before the forget's Forget (the redirect names the customer, who got the
    state). A link whose Take came after the Forget got nothing, nor one whose Merge came
    after: the Forget answered MERGED and the forget's own Merge, with no state, bound the
    link first (sagas.py), so its customer keeps its own events."""
    link = [i for i, who in enumerate(order) if who == "L"]
    forget = [i for i, who in enumerate(order) if who == "F"]
    return link[1] < forget[0] or link[MERGE_STEP] < forget[1]


def run(by_alias: bool, forget_steps: int) -> None:
    backend = LocalBackend()
    orders = schedules(forget_steps)
    cases = [(order, alias_key("cookie", f"v{i:03d}-zq"), f"cust{i:03d}-xq")
             for i, order in enumerate(orders)]

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            await asyncio.gather(*(client.ingest(c, "app_open", T0) for _, _, c in cases))
            await asyncio.gather(*(client.ingest(anonymous_id(k), "page_view", T0 + i,
                                                 {"category": "home"})
                                   for _, k, _ in cases for i in range(VISITS)))

            def forget(key: str) -> AsyncIterator[bool]:
                return forget_by_alias(client, key) if by_alias else \
                    client.forget_steps(anonymous_id(key))
            await asyncio.gather(*(interleave({"L": client.link_steps(k, c), "F": forget(k)},
                                              order) for order, k, c in cases))
            wrong = []
            for order, k, c in cases:
                # a request by the anonymous id follows a link's redirect to its customer
                anonymous = await client.profile(anonymous_id(k), T0)
                known = await client.profile(c, T0)
                events = None if known is None else known["events_applied"]
                allowed = {1} if by_alias or not merged_before_forget(order) else {1 + VISITS}
                if anonymous not in (None, known) or events not in allowed | {None}:
                    wrong.append((order, anonymous, events))
                elif events is None and not (by_alias and visitor_reached_customer(order)):
                    # a forget by id leaves the customer, and by the alias one that got
                    # nothing from the visitor
                    wrong.append((order, "customer forgotten"))
            assert wrong == []
            held = [(s.name, a) for s in backend.shards.values()
                    for m in s.directory.redirects.values()
                    for a, (_, _, state) in m.items() if state is not None]
            assert held == []  # no visitor's state is left waiting for a Merge
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_every_interleaving_of_a_link_and_a_forget_by_the_alias_forgets_the_visitor():
    """The forget's resolution, its Forget of the anonymous customer, its Bury, and the
    forget of the customer the link pointed the alias at meanwhile (if any), against the
    link's five steps: the visitor's events survive nowhere; the customer the link names
    is forgotten with them or keeps only its own, and keeps them if the link's Take came
    after the forget's Forget (it got nothing from the visitor)."""
    run(by_alias=True, forget_steps=6)


def test_every_interleaving_of_a_link_and_a_forget_of_the_anonymous_id_forgets_the_visitor():
    """The forget of the anonymous id (its Forget, its Bury) against the link's five steps:
    the customer keeps only its own events, unless the link merged the visitor's before the
    forget began (the forget then came after the link, as it would have after one that
    finished)."""
    run(by_alias=False, forget_steps=2)
