"""Customers' homes in the store: sealed, so damage is seen rather than misread, and a damaged
one refuses its customer's requests only (the round goes on for everyone else), its forget
included until it is restored or removed."""
from __future__ import annotations

import hashlib

import msgpack
import pytest

from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import (INVALID, Claim, Forgotten, Link, Ok, Retire,
                                     Unavailable)
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.sealed import DIGEST, MAGIC
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, event, forget, merge, outcome,
                                        p_of, profile, shard, take)


def home_file(tmp_path, customer: str):
    name = hashlib.blake2b(customer.encode(), digest_size=16).hexdigest()
    return tmp_path / "customers" / f"p{p_of(customer)}" / f"{name}.blk"


def passivated(compiled, tmp_path, *customers: str):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event(c, "page_view", T0, category="home") for c in customers])
    s.passivate(clock.now + 10**6)  # they live in their homes only
    return s, clock


def test_a_damaged_home_refuses_its_customer_and_the_round_goes_on(compiled, tmp_path):
    s, clock = passivated(compiled, tmp_path, "ana", "bob")
    path = home_file(tmp_path, "ana")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x40  # a bit flip that still decodes: only the checksum sees it
    path.write_bytes(bytes(data))
    replies, _ = s.process([event("ana", "page_view", T0 + 1, category="home"),
                            event("bob", "page_view", T0 + 1, category="home")])
    assert isinstance(replies[0], Unavailable) and "damaged" in replies[0].reason
    assert replies[1].status == "ok"
    assert s.process([profile("bob", clock.now)])[0][0].value["events_applied"] == 2
    assert s.stats()["damaged_homes"] == 1
    path.unlink()  # the operator's way out: the customer starts again
    assert s.process([profile("ana", clock.now)])[0][0].status == "missing"


def test_a_home_written_before_homes_were_sealed_is_still_read(compiled, tmp_path):
    s, clock = passivated(compiled, tmp_path, "ana")
    path = home_file(tmp_path, "ana")
    customer_id, blob = msgpack.unpackb(path.read_bytes(), raw=False)
    payload = blob[len(MAGIC) + DIGEST:]
    assert blocks.unpack(payload)["ids"] == ["ana"]
    path.write_bytes(msgpack.packb([customer_id, payload], use_bin_type=True))
    assert s.process([profile("ana", clock.now)])[0][0].value["events_applied"] == 1


ENVELOPE_DAMAGES = {"first byte flipped": lambda data: bytes([data[0] ^ 1]) + data[1:],
                    "truncated to nothing": lambda data: b"",
                    "last byte cut": lambda data: data[:-1]}


@pytest.mark.parametrize("how", ENVELOPE_DAMAGES)
def test_a_home_whose_envelope_is_damaged_is_a_damaged_home(compiled, tmp_path, how):
    """The store's [id, blob] pair around the sealed blob, which its checksum does not cover:
    damaged, it refuses its customer only, and a restart recovers (skipping its records)."""
    s, clock = passivated(compiled, tmp_path, "ana", "bob")
    path = home_file(tmp_path, "ana")
    path.write_bytes(ENVELOPE_DAMAGES[how](path.read_bytes()))
    replies, _ = s.process([event("ana", "page_view", T0 + 1, category="home"),
                            event("bob", "page_view", T0 + 1, category="home")])
    assert isinstance(replies[0], Unavailable) and "damaged" in replies[0].reason
    assert replies[1].status == "ok"
    again = restarted(s, tmp_path, clock)
    assert again.process([profile("bob", clock.now)])[0][0].value["events_applied"] == 2
    assert isinstance(again.process([profile("ana", clock.now)])[0][0], Unavailable)


def test_a_home_file_holding_another_customer_is_a_damaged_home(compiled, tmp_path):
    s, clock = passivated(compiled, tmp_path, "ana", "bob")
    home_file(tmp_path, "ana").write_bytes(home_file(tmp_path, "bob").read_bytes())
    reply = s.process([profile("ana", clock.now)])[0][0]
    assert isinstance(reply, Unavailable) and "is damaged" in reply.reason
    assert s.process([profile("bob", clock.now)])[0][0].value["events_applied"] == 1


def damage(tmp_path, customer: str) -> None:
    path = home_file(tmp_path, customer)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x40
    path.write_bytes(bytes(data))


def restarted(s: Shard, tmp_path, clock: Clock) -> Shard:
    s.close()
    again = Shard(s.name, s.compiled, list(s.owned), N_PARTITIONS,
                  store=DirectoryStore(tmp_path), clock=clock)
    again.recover()
    return again


def linked(s: Shard, customer: str, key: str) -> str:
    """`key` linked to `customer` through every step of the saga; the key."""
    link = link_id(key, customer)
    s.process([Claim(partition=p_of(customer), customer_id=customer, key=key, link=link),
               Link(partition=p_of(key), key=key, customer_id=customer),
               take(anonymous_id(key), link, customer), merge(customer, link, key, None)])
    return key


@pytest.mark.parametrize("snapshotted", [True, False])
def test_a_customer_whose_home_is_damaged_is_forgotten_only_once_it_is_restored(
        compiled, tmp_path, snapshotted):
    """The aliases merged into a customer are kept in its home only (the link's claim is
    dropped at its merge, or when a restart reads a snapshot written after it; a replay
    that skips the merge of a damaged home keeps the claim, as the home may come back from
    an older backup): a forget that cannot read the home answers UNAVAILABLE, naming it,
    rather than leave the alias naming the forgotten id; restored from a backup, the home
    gives them up and the forget retires them."""
    s, clock = passivated(compiled, tmp_path, "ana", "bob")
    key = linked(s, "ana", alias_key("email", "ana@example.com"))
    s.passivate(clock.now + 10**7)
    if snapshotted:
        s.snapshot()
    backup = home_file(tmp_path, "ana").read_bytes()
    damage(tmp_path, "ana")
    s = restarted(s, tmp_path, clock)
    assert s.directory.claims(p_of("ana"), "ana") == ([] if snapshotted else [key])
    replies, _ = s.process([forget("ana"), event("bob", "page_view", T0 + 1, category="home")])
    assert isinstance(replies[0], Unavailable) and replies[1].status == "ok"
    assert f"stored profile (partition {p_of('ana')}) is damaged" in replies[0].reason
    assert s.directory.resolve(p_of(key), key, s.ctx.clock()) == "ana"
    s.tick()
    assert home_file(tmp_path, "ana").exists()
    home_file(tmp_path, "ana").write_bytes(backup)  # the operator restores it
    [forgotten], _ = s.process([forget("ana")])
    assert forgotten.existed and forgotten.aliases == [key]
    retired, _ = s.process([Retire(partition=p_of(key), key=key, customer_id="ana")])
    assert retired == [Ok(value=True)]
    assert s.directory.linked(p_of(key), key) is None
    s.tick()  # the forget is durable: its home goes
    assert not home_file(tmp_path, "ana").exists()


def test_a_damaged_home_removed_by_the_operator_is_forgotten(compiled, tmp_path):
    """The other way out: the customer starts again from nothing, and is forgotten (without
    the aliases its home held: they stay linked)."""
    s, _ = passivated(compiled, tmp_path, "ana")
    damage(tmp_path, "ana")
    assert isinstance(s.process([forget("ana")])[0][0], Unavailable)
    home_file(tmp_path, "ana").unlink()
    assert s.process([forget("ana")])[0] == [Forgotten(existed=False, aliases=[])]


@pytest.mark.parametrize("snapshotted", [True, False])
def test_a_link_whose_merge_never_came_is_retired_by_a_forget_after_a_restart(
        compiled, tmp_path, snapshotted):
    """Its client died after step 1: the alias names the customer, and only the claim says
    so; it is recovered from the partition's snapshot or replayed from the journal."""
    s, clock = passivated(compiled, tmp_path, "ana")
    key = alias_key("email", "ana@example.com")
    s.process([Claim(partition=p_of("ana"), customer_id="ana", key=key,
                     link=link_id(key, "ana")),
               Link(partition=p_of(key), key=key, customer_id="ana")])
    if snapshotted:
        s.snapshot()
    s = restarted(s, tmp_path, clock)
    [forgotten], _ = s.process([forget("ana")])
    assert forgotten.existed and forgotten.aliases == [key]
    retired, _ = s.process([Retire(partition=p_of(key), key=key, customer_id="ana")])
    assert retired == [Ok(value=True)]


def test_an_outcome_for_a_damaged_home_is_refused_after_its_checks(compiled, tmp_path):
    s, clock = passivated(compiled, tmp_path, "ana")
    damage(tmp_path, "ana")
    forged, _ = s.process([outcome("ana", "service_menu", "made-up")])
    assert forged[0].status == INVALID  # refused before the store is read
    assert s.stats().get("activations", 0) == 0
    offline, _ = s.process([outcome("ana", "service_menu", None, kind="convert")])
    assert isinstance(offline[0], Unavailable) and "damaged" in offline[0].reason


def test_recovery_skips_the_records_of_a_customer_whose_home_is_damaged(compiled, tmp_path):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "page_view", T0, category="home")])
    s.passivate(clock.now + 10**6)
    s.process([event("ana", "page_view", T0 + 1, category="home"),
               event("bob", "page_view", T0 + 1, category="home")])
    s.close()
    damage(tmp_path, "ana")
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS,
                  store=DirectoryStore(tmp_path), clock=clock)
    again.recover()  # serves: bob's record applied, ana's skipped
    assert again.process([profile("bob", clock.now)])[0][0].value["events_applied"] == 1
    assert isinstance(again.process([profile("ana", clock.now)])[0][0], Unavailable)


def test_a_home_damaged_before_its_merge_was_snapshotted_keeps_the_claim_for_a_forget(
        compiled, tmp_path):
    """Recovery skips the merge of a damaged home; the operator may restore a backup older
    than it, which lacks the alias, so the claim must stay for the forget to retire it."""
    s, clock = passivated(compiled, tmp_path, "ana")
    backup = home_file(tmp_path, "ana").read_bytes()  # the nightly backup, before the link
    key = linked(s, "ana", alias_key("email", "ana@example.com"))
    s.passivate(clock.now + 10**7)
    damage(tmp_path, "ana")
    s = restarted(s, tmp_path, clock)
    assert s.directory.claims(p_of("ana"), "ana") == [key]
    home_file(tmp_path, "ana").write_bytes(backup)  # the operator restores the backup
    [forgotten], _ = s.process([forget("ana")])
    assert forgotten.existed and forgotten.aliases == [key]


def test_passivated_counts_the_homes_of_customers_not_resident(compiled, tmp_path):
    """A customer back from its home keeps it until its next passivation, and a new one has
    none, so neither is passivated; a snapshot says which residents have a home."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=60)
    s.process([event(f"old{i}", "app_open", T0) for i in range(10)])
    clock.now += 120
    s.passivate(clock.now)
    s.process([event(f"new{i}", "app_open", clock.now) for i in range(10)])
    s.process([profile("old0", clock.now)])  # back from its home
    s.stored = s.store.count(list(s.owned))  # as ShardHost counts it
    assert (s.stored, s.stats()["resident"], s.stats()["passivated"]) == (10, 11, 9)
    s.snapshot()
    again = restarted(s, tmp_path, clock)
    again.stored = again.store.count(list(again.owned))
    assert (again.stats()["resident"], again.stats()["passivated"]) == (11, 9)


def test_which_residents_have_a_home_is_a_byte_of_their_profile_rows(compiled, tmp_path):
    """What `passivated` leaves out, the residents with a home, is one byte of each profile
    row rather than an id in a set (some 34 MB a million residents): set for a customer back
    from its home, kept when the table grows, cleared with its row, which another then takes."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=60,
              resident_limit=2)
    s.process([event(c, "app_open", T0) for c in ("ana", "bob")])
    clock.now += 120
    s.passivate(clock.now)
    table = s.engine.table
    s.process([profile("ana", clock.now)])  # back from its home
    s.process([event(f"new{i}", "app_open", clock.now) for i in range(5)])  # the table grows
    assert table.home.itemsize == 1 and table.capacity > 2
    assert [c for c, row in table.index.items() if table.home[row]] == ["ana"]
    s.stored = s.store.count(list(s.owned))  # as ShardHost counts it
    assert s.stats()["passivated"] == 1  # bob's home
    s.residency.evict("ana", p_of("ana"))
    s.process([event("cy", "app_open", clock.now)])  # in ana's row
    assert not table.home.any() and s.stats()["passivated"] == 2
