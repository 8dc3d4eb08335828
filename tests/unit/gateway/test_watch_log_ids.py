"""A gateway's logs name no customer id: they outlive ForgetCustomer (rev43 identity finding 6,
where the warning of a given-up unregistration logged the whole watch, an alias's anonymous id
such as ~email:ana@example.com too). It names the customer by a keyed fingerprint, and the
view."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kairos.cluster.gateway import streams as streams_module
from kairos.core.request import quoted

from kairos.cluster.gateway.streams import Watch, Watches, logged
from kairos.cluster.identity import fingerprint
from kairos.cluster.transport.client import Busy

from tests.support.waiting import until
from tests.unit.gateway.test_watch_settling import FakeShards, hang_up, in_place

EMAIL = "~email:ana@example.com"


class QuotingShards(FakeShards):
    """Unregistrations fail with a Busy quoting the id, as a shard's reason may."""

    async def _apply(self, key: tuple, active: bool) -> None:
        if not active:
            raise Busy(f"the shard of {key[0]!r} is at its queue limit")
        await super()._apply(key, active)


def test_a_given_up_unregistration_is_logged_by_fingerprint(monkeypatch, caplog):
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.01, 0.01))
    monkeypatch.setattr(streams_module, "UNWATCH_RETRY_S", 0.05)

    async def main() -> None:
        shards = QuotingShards()
        watches = Watches("g", shards, shards)
        a = await in_place(watches, Watch(EMAIL, "web", "hero"))
        await hang_up(a)
        await until(lambda: not watches._watched, 5, "the gateway to give up")

    with caplog.at_level(logging.WARNING, "kairos.gateway"):
        asyncio.run(main())
    logged, = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert "ana" not in logged and "email" not in logged, logged
    shown = fingerprint(EMAIL, streams_module.LOG_SECRET)
    assert f"customer {shown} on web/hero" in logged and "Busy" in logged, logged
    assert logged.count(shown) == 2  # the error's quote too


@pytest.mark.parametrize("customer", ["~email:o'brien\"x@example.com", "DOMAIN\\ana",
                                      "~email:" + "a" * 300 + "@example.com"])
def test_an_error_quoting_the_id_by_repr_is_logged_by_fingerprint(customer):
    """Errors quote an id by repr (or a long one's start: core.request.quoted), which escapes
    a backslash, or a quote when it holds both kinds (review rev43 d-identity finding 7)."""
    shown = fingerprint(customer, streams_module.LOG_SECRET)
    for quoting in (repr, quoted):
        _, why = logged(Watch(customer, "web", "hero"),
                        Busy(f"customer {quoting(customer)} is being forgotten"))
        assert why == f"customer {shown} is being forgotten"
