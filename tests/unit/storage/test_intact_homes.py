"""`intact_homes`: a batch of homes where one damaged home costs only its own customer
(None for it), in every store (review rev43 d2-ctl-dur finding 3)."""
from __future__ import annotations

from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import intact_homes

from tests.unit.storage.test_store import store  # noqa: F401 (the fixture)


def test_undamaged_homes_are_one_batch(store):  # noqa: F811
    store.put(3, "ana", b"a")
    store.put(3, "bob", b"b")
    assert intact_homes(store, 3, ["bob", "eve", "ana"]) == [b"b", None, b"a"]
    assert intact_homes(store, 3, []) == []


def test_a_damaged_home_is_none_and_the_others_are_read(tmp_path):
    homes = DirectoryStore(tmp_path)
    for customer_id in ("ana", "bob", "cy", "dee"):
        homes.put(3, customer_id, customer_id.encode())
    homes._home(3, "ana").write_bytes(homes._home(3, "bob").read_bytes())  # another id's
    homes._home(3, "cy").write_bytes(b"\xc1 not a home")
    assert intact_homes(homes, 3, ["ana", "bob", "cy", "dee", "eve"]) == \
        [None, b"bob", None, b"dee", None]
