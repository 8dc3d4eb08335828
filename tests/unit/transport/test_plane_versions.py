"""A data plane client that meets a shard of another protocol (another Kairos version, as a
rolling upgrade runs for a while) says which protocol each end speaks and what to do, and
warns of it in the log, once in a while: it said only that the shard was "not a data plane
shard of protocol N", as of a port that is no shard at all."""
from __future__ import annotations

import asyncio
import logging
import secrets

import pytest

from kairos.cluster.transport import dataplane
from kairos.cluster.transport.dataplane import (_CHALLENGE, MAGIC, PROTOCOL, PlaneClosed,
                                                PlaneConnection)


async def refused_by_an_older_shard() -> str:
    async def older(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_CHALLENGE.pack(MAGIC, PROTOCOL - 1, secrets.token_bytes(32)))
        await writer.drain()
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(older, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PlaneClosed) as closed:
            await PlaneConnection.open("127.0.0.1", port, b"s" * 32)
        return str(closed.value)
    finally:
        server.close()
        await server.wait_closed()


def test_a_shard_of_another_protocol_is_named_as_such_and_warned_of(caplog, monkeypatch):
    monkeypatch.setattr(dataplane, "_MISMATCHES",
                        dataplane.ThrottledWarning(dataplane.log, dataplane.REFUSED_LOG_S))
    with caplog.at_level(logging.WARNING, logger="kairos.dataplane"):
        said = asyncio.run(refused_by_an_older_shard())
    expected = (f"the shard speaks protocol {PROTOCOL - 1}, this client {PROTOCOL}: run one "
                f"Kairos version")
    assert said.endswith(expected)
    assert [r.getMessage() for r in caplog.records if expected in r.getMessage()]
