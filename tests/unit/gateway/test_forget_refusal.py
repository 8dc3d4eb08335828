"""A request refused because its customer's forget is under way ends UNAVAILABLE telling the
caller that nothing was applied and to retry ForgetCustomer, not that it may have been
applied (which invites retrying the request itself)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.gateway import calls
from kairos.cluster.protocol import BEING_FORGOTTEN
from kairos.cluster.transport.client import ShardUnavailable


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_a_request_for_a_customer_being_forgotten_is_told_to_retry_the_forget():
    with pytest.raises(Aborted) as aborted:
        asyncio.run(calls.abort(Context(), ShardUnavailable(BEING_FORGOTTEN)))
    assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
    assert aborted.value.details == BEING_FORGOTTEN
    assert "nothing was applied" in BEING_FORGOTTEN and "may have been" not in BEING_FORGOTTEN
