"""A store serves one cluster at a time (store.py, "Ownership"): a claim another cluster's live
controller holds is refused, naming the store (without its password) and its holder; one a
crashed controller held is free (a directory's flock goes with its process) or free once its
lease runs out (Redis); one given up is free at once; the same cluster claims it again. A
holder whose renewal finds another's lease has lost the store for good; one that could not
renew for as long as its lease lasts takes it again once the store answers, if no other
cluster took it."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time

import pytest
import redis

from kairos.cluster.storage import ownership, redis_store
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.ownership import StoreClaim
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreInUse

SECRET = "claim-secret"
# the claims' here: short, so that the tests wait little, and long enough that a test sees
# a lease before it runs out
LEASE_S, RENEW_S = 3.0, 0.5
HOLD = ("import sys; from kairos.cluster.storage.directory_store import DirectoryStore; "
        "DirectoryStore(sys.argv[1]).claim('theirs', 'the other cluster'); print('claimed', "
        "flush=True); sys.stdin.read()")


def test_a_directory_another_process_holds_is_refused_until_that_process_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "claimed\n"
        store = DirectoryStore(tmp_path)
        with pytest.raises(StoreInUse) as refused:
            store.claim("mine", "this cluster")
        assert str(refused.value).startswith(
            f"the store {tmp_path} is in use by another Kairos cluster (its controller: the "
            f"other cluster): a store serves one cluster at a time. Stop that cluster first")
    finally:
        holder.kill()  # a crash: nothing released
        holder.wait()
    store.claim("mine", "this cluster")  # the kernel dropped the dead process's lock
    assert (tmp_path / "owner.lock").read_text() == "this cluster\nmine"  # holder, owner


def test_one_process_holds_a_directory_for_one_owner_until_it_gives_it_up(tmp_path):
    first, restarted, other = (DirectoryStore(tmp_path) for _ in range(3))
    first.claim("a", "cluster a")
    restarted.claim("a", "cluster a, restarted")  # a controller of the same cluster
    with pytest.raises(StoreInUse, match="its controller: cluster a"):
        other.claim("b", "cluster b")
    other.release("b")  # not b's to give up
    with pytest.raises(StoreInUse):
        other.claim("b", "cluster b")
    first.release("a")
    other.claim("b", "cluster b")
    with pytest.raises(StoreInUse, match="its controller: cluster b"):
        restarted.claim("a", "cluster a")


@pytest.fixture
def redis_url(redis_server, monkeypatch):
    """A store with a password (an ACL user), its lease LEASE_S (Store.claim takes no length:
    RedisStore's is its import of ownership.LEASE_S)."""
    with redis.Redis(port=redis_server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "owner", "on", f">{SECRET}", "~*", "+@all")
        admin.delete("own:owner")
    monkeypatch.setattr(redis_store, "LEASE_S", LEASE_S)
    return f"redis://owner:{SECRET}@127.0.0.1:{redis_server.port}/0?prefix=own"


def claim_on(url: str, owner: str) -> StoreClaim:
    return StoreClaim(open_store(url), owner, LEASE_S, RENEW_S)


async def logged(caplog, text: str) -> None:
    """Wait, generously, until the claim's log says `text` (a renewal ran); fail if it never
    does."""
    with caplog.at_level("WARNING", "kairos.store"):
        for _ in range(100):
            if text in caplog.text:
                return
            await asyncio.sleep(RENEW_S / 2)
    pytest.fail(f"the claim never logged {text!r}")


def test_a_redis_store_another_cluster_renews_is_refused_and_claimed_once_it_crashed(redis_url,
                                                                                    caplog):
    async def running() -> tuple[StoreClaim, str]:
        first = claim_on(redis_url, "first")
        await first.claim()
        with pytest.raises(StoreInUse) as refused:
            await claim_on(redis_url, "second").claim()
        await claim_on(redis_url, "first").claim()  # Ray restarted its controller
        return first, str(refused.value)

    first, refused = asyncio.run(running())  # the loop's end stops the renewals: a crash
    assert refused.startswith(f"the store redis://***@127.0.0.1:{redis_url.split(':')[-1]} is "
                              f"in use by another Kairos cluster (its controller: "
                              f"{first.holder}): a store serves one cluster at a time")
    assert SECRET not in refused
    second = claim_on(redis_url, "second")
    with caplog.at_level("WARNING", "kairos.store"):
        asyncio.run(second.claim())  # once the crashed cluster's lease ran out
    assert re.search(rf"held by another cluster: waiting up to \d+ s for the lease of "
                     rf"{re.escape(first.holder)} to run out or be renewed", caplog.text)
    assert "once the lease of the cluster that held it ran out" in caplog.text
    assert SECRET not in caplog.text
    with pytest.raises(StoreInUse, match=second.holder):
        open_store(redis_url).claim("first", "first, started again")


def test_a_redis_store_given_up_is_free_at_once_and_only_its_holder_gives_it_up(redis_url,
                                                                               monkeypatch):
    # a lease that outlasts a claim's wait for it: only its release frees the store
    monkeypatch.setattr(redis_store, "LEASE_S", 600.0)

    async def main() -> None:
        first = claim_on(redis_url, "first")
        await first.claim()
        await claim_on(redis_url, "second").release()  # not its own
        with pytest.raises(StoreInUse):
            open_store(redis_url).claim("second", "second")
        await first.release()
        await claim_on(redis_url, "second").claim()
    asyncio.run(main())


def test_a_claim_whose_renewals_hang_past_its_lease_is_taken_again_once_the_store_answers(
        redis_url, redis_server, caplog):
    """A Redis that stops answering for longer than the lease (a failover, a pause) is no
    reason to stop the cluster: its shards ride it out as UNAVAILABLE, and the claim is taken
    again as soon as a renewal gets through, no other cluster having claimed the store."""
    async def main() -> None:
        held = claim_on(redis_url, "first")
        await held.claim()
        with redis.Redis(port=redis_server.port) as admin:
            admin.execute_command("CLIENT", "PAUSE", int((LEASE_S + RENEW_S) * 1000), "WRITE")
            await asyncio.sleep(LEASE_S + 2 * RENEW_S)  # its renewals hang meanwhile
        await logged(caplog, "taken again")
        assert ("taken again, no other cluster holds it now; one may have written to it "
                "meanwhile") in caplog.text
        assert held.lost() is None
        held.check()
        with pytest.raises(StoreInUse, match="in use by another Kairos cluster"):
            open_store(redis_url).claim("second", "second")
        await held.release()
    asyncio.run(main())


def test_a_claim_whose_renewal_finds_another_clusters_lease_is_lost_for_good(redis_url,
                                                                           redis_server):
    async def main() -> None:
        held = claim_on(redis_url, "first")
        await held.claim()
        with redis.Redis(port=redis_server.port) as admin:
            admin.delete("own:owner")  # as a failover to a replica it had not reached does
        open_store(redis_url).claim("second", "the second cluster")
        why = await asyncio.wait_for(held.until_lost(), 5)
        assert why.startswith("this cluster lost its store to another: the store ")
        with pytest.raises(StoreInUse, match="its controller: the second cluster"):
            await held.claim()
        held.store.release("second")  # the second stops: this one's claim stays lost
        with pytest.raises(StoreInUse, match="its controller: the second cluster"):
            held.check()
    asyncio.run(main())


def test_a_holder_whose_loop_stalled_past_its_lease_knows_it_lost_the_claim(redis_url):
    """As a GC pause or an overloaded host: the renewals did not run, the lease ran out, and
    another cluster claimed the store meanwhile; the holder's next renewal finds that out."""
    async def main() -> None:
        held = claim_on(redis_url, "first")
        await held.claim()
        time.sleep(LEASE_S + RENEW_S)  # the whole loop stalls
        open_store(redis_url).claim("second", "the second cluster")
        why = await asyncio.wait_for(held.until_lost(), 5)
        assert why.startswith("this cluster lost its store to another")
        with pytest.raises(StoreInUse):
            held.check()
        with pytest.raises(StoreInUse):
            await held.claim()
    asyncio.run(main())


def test_a_holder_whose_loop_stalled_past_its_lease_takes_it_again_if_nobody_did(redis_url,
                                                                                caplog):
    async def main() -> None:
        held = claim_on(redis_url, "first")
        await held.claim()
        time.sleep(LEASE_S + RENEW_S)  # the whole loop stalls; nobody claims meanwhile
        await logged(caplog, "taken again")  # a renewal ran
        assert held.lost() is None
        with pytest.raises(StoreInUse, match="in use by another Kairos cluster"):
            open_store(redis_url).claim("second", "second")
        await held.release()
    asyncio.run(main())


class Hung:
    """A store whose next claim, once `hang()` is called, hangs until `answer()`."""

    def __init__(self, store):
        self.store, self.hanging, self.answered = store, False, threading.Event()

    def hang(self) -> None:
        self.hanging = True

    def answer(self) -> None:
        self.answered.set()

    def claim(self, owner: str, holder: str) -> None:
        if self.hanging:
            self.hanging = False
            self.answered.wait()
        self.store.claim(owner, holder)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_a_renewal_given_up_on_that_lands_during_the_release_leaves_no_lease(
        redis_url, monkeypatch, caplog):
    """Its call runs on after the renewal gave up on it: the release waits for it, not to
    have it claim the store again after (a lease nobody renews, which a start waits out)."""
    monkeypatch.setattr(ownership, "CALL_S", 1.0)

    async def main() -> None:
        store = Hung(open_store(redis_url))
        held = StoreClaim(store, "first", LEASE_S, RENEW_S)
        await held.claim()
        store.hang()
        await logged(caplog, "renewing the claim on the store failed")  # it gave up
        releasing = asyncio.ensure_future(held.release())
        await asyncio.sleep(0.1)
        store.answer()  # the renewal's call lands now
        await releasing
        open_store(redis_url).claim("second", "the second cluster")  # free
    asyncio.run(main())
