"""Identity: aliases, the alias directory, and what a link leaves behind.

An alias is a (type, value) pair a channel knows a customer by: a cookie, a device id, an
e-mail address. The directory that maps aliases to customers is partitioned like the
customers, by the hash of the alias key, so it scales and moves with the shards and needs no
other store. An alias nobody has linked yet stands for an anonymous customer whose id is the
alias key behind a `~`; anonymous customers get profiles like anyone else.

Linking an alias to a customer runs in three steps, each idempotent, so a retried link merges
exactly once (see KairosClient.link):

1. the alias's directory shard points the alias at the customer (new requests go there);
2. the anonymous profile's shard hands its state over and leaves a redirect, so requests
   already on their way to the anonymous id follow it to the customer;
3. the customer's shard folds the state in, remembering the link so a retry is a no-op.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Iterable

from kairos.core.errors import InputError

ANONYMOUS = "~"  # prefix of anonymous customers' ids; customer ids may not start with it
ALIAS_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_ALIAS_VALUE = 256
REDIRECTS_PER_PARTITION = 4096  # recent links whose anonymous ids still redirect


def alias_key(alias_type: str, value: str, field: str = "alias") -> str:
    """The directory key of an alias, after checking it."""
    if not isinstance(alias_type, str) or not ALIAS_TYPE.fullmatch(alias_type):
        raise InputError(f"{field}.type", f"expected a lower-case name such as 'cookie' or "
                                          f"'email' (letters, digits, _), got {alias_type!r}")
    if not isinstance(value, str) or not value:
        raise InputError(f"{field}.value", "expected a non-empty string")
    if len(value) > MAX_ALIAS_VALUE:
        raise InputError(f"{field}.value", f"longer than {MAX_ALIAS_VALUE} characters")
    return f"{alias_type}:{value}"


def anonymous_id(key: str) -> str:
    return ANONYMOUS + key


def link_id(key: str, customer_id: str) -> str:
    """Linking the same alias to the same customer again is the same link."""
    return f"{key}>{customer_id}"


def check_linkable(customer_id: str, field: str = "customer_id") -> None:
    if customer_id.startswith(ANONYMOUS):
        raise InputError(field, f"ids starting with {ANONYMOUS!r} are anonymous profiles; "
                                f"link aliases to a known customer's id")


class Directory:
    """A shard's share of the alias directory, and the redirects of merged anonymous ids,
    both per partition so they move with their partition."""

    def __init__(self) -> None:
        self.aliases: dict[int, dict[str, str]] = {}  # partition -> alias key -> customer
        # partition -> anonymous id -> [customer, link id, the state handed over (until the
        # customer's shard confirms the merge)]
        self.redirects: dict[int, OrderedDict[str, list]] = {}
        self._redirected: dict[str, str] = {}  # anonymous id -> customer, for the hot path

    def resolve(self, partition: int, key: str) -> str:
        return self.aliases.get(partition, {}).get(key) or anonymous_id(key)

    def link(self, partition: int, key: str, customer_id: str) -> str | None:
        """Point the alias at the customer; the customer it already names, if another."""
        current = self.aliases.setdefault(partition, {}).setdefault(key, customer_id)
        return None if current == customer_id else current

    def unlink(self, partition: int, key: str, customer_id: str) -> bool:
        mine = self.aliases.get(partition, {})
        if mine.get(key) != customer_id:
            return False
        del mine[key]
        return True

    @property
    def redirecting(self) -> bool:
        return bool(self._redirected)

    def redirect_of(self, customer_id: str) -> str | None:
        return self._redirected.get(customer_id)

    def handed_over(self, partition: int, anonymous: str) -> list | None:
        return self.redirects.get(partition, {}).get(anonymous)

    def leave_redirect(self, partition: int, anonymous: str, customer_id: str, link: str,
                       state: bytes | None) -> None:
        mine = self.redirects.setdefault(partition, OrderedDict())
        mine[anonymous] = [customer_id, link, state]
        self._redirected[anonymous] = customer_id
        if len(mine) > REDIRECTS_PER_PARTITION:
            gone, _ = mine.popitem(last=False)
            self._redirected.pop(gone, None)

    def settle(self, partition: int, anonymous: str, link: str) -> None:
        """The merge is confirmed: the handed-over state is no longer needed."""
        entry = self.handed_over(partition, anonymous)
        if entry is not None and entry[1] == link:
            entry[2] = None

    def drop_redirect(self, partition: int, anonymous: str) -> None:
        self.redirects.get(partition, {}).pop(anonymous, None)
        self._redirected.pop(anonymous, None)

    # -- partition handoff ---------------------------------------------------------------------

    def export(self, partitions: Iterable[int]) -> dict[str, Any]:
        return {"aliases": {p: self.aliases.get(p, {}) for p in partitions},
                "redirects": {p: list(self.redirects.get(p, {}).items()) for p in partitions}}

    def load(self, payload: dict[str, Any]) -> None:
        for p, aliases in payload["aliases"].items():
            self.aliases[int(p)] = dict(aliases)
        for p, redirects in payload["redirects"].items():
            for anonymous, (customer_id, link, state) in redirects:
                self.leave_redirect(int(p), anonymous, customer_id, link, state)

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.aliases.pop(p, None)
            for anonymous in self.redirects.pop(p, {}):
                self._redirected.pop(anonymous, None)

    def count(self) -> int:
        return sum(len(a) for a in self.aliases.values())
