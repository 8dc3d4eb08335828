"""The identity sagas a client runs (identity.py): linking an alias to a customer, merging its
anonymous profile exactly once, and forgetting a customer with every alias. Each is a series of
idempotent steps, each a request routed like any other; the steps are also offered one at a
time, for tests that interleave a link's with a forget's. A part of KairosClient (client.py),
which routes and settles the requests (`_ask`, `_value`)."""
from __future__ import annotations

import itertools
from typing import AsyncIterator

from kairos.cluster.identity import (ANONYMOUS, NAMES_ANOTHER, alias_key, anonymous_id,
                                     check_linkable, link_id)
from kairos.cluster.protocol import (Bury, Claim, Conflict, Forget, Forgotten, Link, Merge,
                                     Merged, Resolve, Retire, Settle, Take, Unclaim)
from kairos.cluster.transport.backend import ShardUnavailable

# An anonymous profile is handed over by one link, settled by the first round of `_forget_first`:
# MERGED again after that many rounds is a step that keeps failing, not work to wait on
FORGET_MERGES = 4


class IdentitySagas:
    """KairosClient's identity sagas (a part of it: client.py)."""

    async def forget(self, customer_id: str, by: str | None = None) -> bool:
        """Forget the customer for good: erase it from its shard and store, retire its
        aliases from the directory (with what their anonymous profiles left), and refuse the
        late steps of links that began before (identity.py: the forget saga; every step is
        idempotent: retry on any error, and a retry retires every alias); whether it, or an
        alias's anonymous profile, existed. `by`: the alias key the forget was asked by
        (`forget_key`): forgetting its anonymous customer, the forget also forgets the
        customer a link handed the visitor's state to meanwhile."""
        existed = False
        async for found in self.forget_steps(customer_id, by):
            existed |= found
        return existed

    async def forget_key(self, key: str) -> bool:
        """`forget` by an alias key (identity.alias_key) the caller checked: of its linked
        customer, or the one a forget cut after its Bury retired it from (the retry finishes
        that forget: the alias is released), or its anonymous customer."""
        customer_id = await self._value(Resolve(key=key, for_forget=True))
        return await self.forget(customer_id, key)

    async def forget_steps(self, customer_id: str, by: str | None = None
                           ) -> AsyncIterator[bool]:
        """`forget`, one step per iteration (tests interleave them with a link's): whether
        the step found something to erase."""
        forgotten = await self._forget_first(customer_id)
        yield forgotten.existed
        aliases = list(forgotten.aliases or ())
        if by is not None and by not in aliases and customer_id != anonymous_id(by):
            # a retry of a forget cut after its Bury, which no longer names the alias: it is
            # retired again (its anonymous profile, a visitor's since, erased) and released
            aliases.append(by)
        for key in aliases:
            retired = await self._value(Retire(key=key, customer_id=customer_id))
            yield False
            if retired == NAMES_ANOTHER:  # its link lost the alias: the profile is the winner's
                continue
            yield (await self._ask(Forget(customer_id=anonymous_id(key),
                                          link=link_id(key, customer_id)))).existed
        await self._ask(Bury(customer_id=customer_id))
        for key in aliases:  # no longer resolving to the customer
            await self._value(Retire(key=key, customer_id=customer_id, finished=True))
        await self._ask(Bury(customer_id=customer_id, finished=True))  # nothing left to retry
        yield False
        if by is not None and customer_id == anonymous_id(by) and forgotten.merged_into:
            # a link of the alias under way when the forget resolved it to its anonymous
            # customer handed the visitor's state to a customer since (the redirect the Forget
            # dropped names it): the alias's visitor is that customer now, forgotten too. Not
            # whoever the alias names by now: a link whose Take came after the Forget got
            # nothing from the visitor
            async for found in self.forget_steps(forgotten.merged_into, by):
                yield found

    async def _forget_first(self, customer_id: str) -> Forgotten:
        """A forget's Forget. An anonymous customer whose state a link handed over, not
        settled yet, answers MERGED (identities.py): the link's caller holds the state, and
        its Merge would fold it in after the forget. So the link is merged first, with no
        state (a link merges once: its Merge, late, folds nothing) and settled, and the
        Forget sent again. Its link merging nothing, the link's caller may still finish it:
        the alias then names that customer, whom a forget by the alias forgets too only if
        the link's Merge came first (this Merge found the link bound: the Merge answers
        whether it bound it), not if this one did (nothing reached the customer)."""
        forget, bound_empty = Forget(customer_id=customer_id), set()
        for rounds in itertools.count():
            if not isinstance(reply := await self.enqueue(forget), Merged):
                break
            if rounds == FORGET_MERGES:  # retried, the saga takes this step up again
                raise ShardUnavailable(f"the forget's shard answered {rounds + 1} times that a "
                                       f"link handed the profile over, though each was merged "
                                       f"and settled: retry the forget")
            key = customer_id[len(ANONYMOUS):]
            link = link_id(key, reply.customer_id)
            merge = Merge(customer_id=reply.customer_id, link=link, key=key)
            merged = await self.enqueue(merge)
            if not isinstance(merged, Conflict):  # a forget buried it: so is its late Merge
                if (await self.settle(merge, merged)).value is True:  # it bound the link
                    bound_empty.add(reply.customer_id)
            await self._ask(Settle(anonymous=customer_id, link=link))
        forgotten = await self.settle(forget, reply)
        if forgotten.merged_into in bound_empty:
            # this Merge bound the link, folding nothing: the link's own, late, folds nothing
            # too, so its customer got nothing from the visitor
            return forgotten._replace(merged_into=None)
        return forgotten

    async def resolve(self, alias_type: str, value: str) -> str:
        """The customer an alias names: the linked one, or the alias's anonymous customer."""
        return await self.resolve_key(alias_key(alias_type, value))

    async def resolve_key(self, key: str) -> str:
        """`resolve` for an alias key (identity.alias_key) the caller already checked."""
        return await self._value(Resolve(key=key))

    async def link(self, alias_type: str, value: str, customer_id: str) -> bool:
        """Link an alias to a customer, merging the alias's anonymous profile into it exactly
        once (every step is idempotent: retry on any error); whether a profile merged now.
        Conflict when the alias names another customer, or the customer was forgotten while
        the link was under way; ShardUnavailable (BEING_FORGOTTEN) while a forget of the
        customer is under way: it would re-create the customer (identities.py)."""
        merged = False
        async for merged in self.link_steps(alias_key(alias_type, value), customer_id):
            pass
        return merged

    async def link_steps(self, key: str, customer_id: str) -> AsyncIterator[bool]:
        """`link` of a checked alias key (identity.alias_key), one step per iteration (tests
        interleave them with a forget's): whether a profile merged, so far."""
        check_linkable(customer_id)
        link, anonymous = link_id(key, customer_id), anonymous_id(key)
        step1 = Link(key=key, customer_id=customer_id)
        if await self._value(Resolve(key=key, for_forget=True)) not in (customer_id, anonymous):
            # refused before the Claim (as step 1 would refuse it), which would only be
            # dropped again; also while a forget that retired the alias is unfinished: its
            # next step forgets the alias's anonymous profile
            linked = Conflict(reason=f"alias {key!r} is linked to another customer; forget "
                                     f"that customer (or the alias) first")
        else:
            await self._ask(Claim(customer_id=customer_id, key=key, link=link))
            yield False
            linked = await self.enqueue(step1)
        if isinstance(linked, Conflict):
            # the claim is dropped (this try's, lost in a race with another customer's link,
            # or an earlier try's whose Unclaim failed): a forget of this customer would
            # retire the alias and erase its anonymous profile, once the other customer is
            # forgotten a later visitor's
            await self._ask(Unclaim(customer_id=customer_id, key=key, link=link))
        await self.settle(step1, linked)  # a refusal into client.py's Conflict
        yield False
        state = await self._value(Take(anonymous=anonymous, link=link, target=customer_id))
        yield False
        bound = await self._value(Merge(customer_id=customer_id, link=link, key=key,
                                        state=state))
        merged = bool(bound) and state is not None  # a Merge with no state folds nothing
        yield merged
        if state is not None:
            await self._ask(Settle(anonymous=anonymous, link=link))
            yield merged
