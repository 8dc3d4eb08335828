"""The tests' wait on a condition (tests/support/waiting.py): it returns the condition's value
as soon as it holds, and a condition that never holds fails naming what was waited for and
what the condition last gave, a value or an exception."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.waiting import until, wait_until


def test_it_returns_the_value_once_the_condition_holds_exceptions_meaning_not_yet():
    calls = itertools.count(1)

    def third_time():
        n = next(calls)
        if n == 1:
            raise ConnectionError("not up yet")
        return n >= 3 and f"up on call {n}"

    assert wait_until(third_time, 5, "the third call", poll_s=0) == "up on call 3"


def test_a_condition_that_never_holds_fails_naming_it_and_its_last_value():
    with pytest.raises(AssertionError, match=r"timed out after 0.05 s waiting for the count "
                                             r"to reach 3 \(last value 0\)"):
        wait_until(lambda: 0, 0.05, "the count to reach 3")

    def refused():
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"waiting for the shard \(last raised "
                                             r"ConnectionError\('refused'\)\)"):
        wait_until(refused, 0.05, "the shard")


def test_the_async_wait_lets_the_loop_run_between_polls():
    async def main():
        flag = asyncio.Event()
        asyncio.get_running_loop().call_soon(flag.set)
        assert await until(flag.is_set, 5, "the flag", poll_s=0) is True
        with pytest.raises(AssertionError, match="waiting for never"):
            await until(lambda: None, 0.05, "never")
    asyncio.run(main())
