"""A Forget replayed beside its customer's id made again (and that new profile passivated)
buries the links of the aliases it buried live: the Merge that gave the old profile its alias
is not held by the new profile's home, whatever its stamp, so replay notes the alias for the
Forget to find, and a late step of the buried link is refused after a crash as before it
(review rev43 d-durability finding 2). Past the resident limit, a snapshot's copy of the old
profile with the alias is not left for the new profile's home."""
from __future__ import annotations

from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import Bury, Conflict, Retire
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_shard import (T0, Clock, event, forget, link_steps, merge, p_of,
                                         shard)

C, KEY = "ana", "cookie:c5"


def forgotten_and_remade(compiled, root, crash: bool, snapshot: bool = False,
                         limit: int = 10**6) -> tuple[Shard, Clock, bytes]:
    """Ana linked to KEY (her partition snapshotted then, if `snapshot`), forgotten with
    the whole saga, made again by an event and passivated (the shard recovered, if
    `crash`, with resident limit `limit`); the state the link handed over."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(root), clock=clock)
    s.recover()
    s.process([event(anonymous_id(KEY), "app_open", T0)])
    state, merged = link_steps(s, s, s, KEY, C)
    assert merged.value is True
    if snapshot:
        s.durability.snapshot([p_of(C)])
    assert s.process([forget(C)])[0][0].aliases == [KEY]
    retire = Retire(partition=p_of(KEY), key=KEY, customer_id=C)
    s.process([retire])
    s.process([Bury(partition=p_of(C), customer_id=C), retire._replace(finished=True)])
    s.process([Bury(partition=p_of(C), customer_id=C, finished=True)])
    clock.now += 1
    s.process([event(C, "app_open", clock.now)])
    assert s.passivate(clock.now + 10**6) == 1
    if crash:
        s = shard(compiled, store=DirectoryStore(root), clock=clock, resident_limit=limit)
        s.recover()
    return s, clock, state


def late_merge_refused(s: Shard, clock: Clock, state: bytes) -> bool:
    assert s.directory.link_buried(p_of(C), KEY, C, clock.now + 1)
    reply, = s.process([merge(C, link_id(KEY, C), KEY, state)])[0]
    return isinstance(reply, Conflict) and "forgotten" in reply.reason


def test_a_crash_keeps_the_forgotten_alias_s_link_buried(compiled, tmp_path):
    for crash in (False, True):
        s, clock, state = forgotten_and_remade(compiled, tmp_path / str(crash), crash)
        assert late_merge_refused(s, clock, state)
        assert s.directory.claimed.get(p_of(C), {}).get(C) is None  # the forget took it


def test_past_the_resident_limit_too(compiled, tmp_path):
    """The old profile, with the alias, is in its partition's snapshot; the limit would
    leave the new profile in its home (newer) and replay the forget without the alias."""
    s, clock, state = forgotten_and_remade(compiled, tmp_path, crash=True, snapshot=True,
                                           limit=0)
    assert late_merge_refused(s, clock, state)
