"""The data plane over TLS with a pinned per-incarnation certificate (transport/pinned.py):
review finding (rev40 k8s, 2), everything after the HMAC handshake crossed the pod network
in plaintext, unauthenticated: anyone on the path read events, decisions and profiles, and
could inject frames. Real sockets on 127.0.0.1, TLS forced on (as "auto" does off loopback)."""
from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import tempfile

import msgpack
import psutil
import pytest

from kairos.cluster.protocol import OK, Event, EventAck, request_from
from kairos.cluster.transport import admission, dataplane, pinned
from kairos.cluster.transport.dataplane import PlaneClosed, PlaneConnection, PlaneServer
from kairos.cluster.transport.ray_backend import RayBackend

from tests.support.waiting import until
from tests.unit.transport.test_dataplane_hostile import _handshake

CUSTOMER = "cust-7f3a9e-on-the-wire"
EVENT = Event(partition=0, customer_id=CUSTOMER, event_type="purchase", time=1.0,
              attributes={"amount": 42.5})


@pytest.fixture
def tls_on(monkeypatch):
    monkeypatch.setattr(pinned, "PLANE_TLS", "on")


class _Shard:
    """A shard's handler that acknowledges events and keeps what it was given."""

    def __init__(self):
        self.received: list = []

    async def handle(self, session: str, seq: int, requests: list, routed: list) -> list:
        self.received.extend(request_from(r) for r in requests)
        return [(OK, seq, False, None) for _ in requests]


class _Relay:
    """A TCP relay in the path, as anyone on a pod network can be: keeps every byte it
    passes, and flips a bit of the next chunk towards the shard when told to."""

    def __init__(self, target: tuple[str, int]):
        self._target = target
        self.wire = bytearray()
        self.tamper = False

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[:2]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        await asyncio.gather(self._copy(reader, up_writer, True),
                             self._copy(up_reader, writer, False), return_exceptions=True)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    to_shard: bool) -> None:
        try:
            while data := await reader.read(1 << 16):
                if to_shard and self.tamper:
                    self.tamper = False
                    data = data[:-1] + bytes([data[-1] ^ 1])
                self.wire += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self._server.close()


async def _started(shard: _Shard) -> tuple[PlaneServer, tuple[str, int]]:
    server = PlaneServer(shard.handle)
    return server, await server.start("127.0.0.1")


def test_a_tls_shard_serves_batches_end_to_end(tls_on):
    """The shard publishes its certificate's fingerprint with its address (data_address's
    fourth field), and the client's backend connects over TLS 1.3 with it."""
    class Published:  # a shard's handle as the controller's RayShard is
        async def data_address(self):
            return (*address, server.secret, server.fingerprint)

    async def main():
        nonlocal server, address
        shard = _Shard()
        server, address = await _started(shard)
        assert server.fingerprint is not None and len(server.fingerprint) == 32
        backend = RayBackend()
        backend.shard = lambda name: Published()
        assert await backend.send("s0", "a", 0, [EVENT, EVENT], [1, 1]) == \
            [EventAck(sequence=0), EventAck(sequence=0)]
        assert await backend.send("s0", "a", 1, [EVENT], [1]) == [EventAck(sequence=1)]
        assert shard.received == [EVENT] * 3
        connection = backend._planes["s0"].result()
        assert connection._writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        await backend.close()
        server.close()

    server = address = None
    asyncio.run(main())


def test_each_incarnation_has_its_own_certificate(tls_on):
    async def main():
        first, _ = await _started(_Shard())
        second, _ = await _started(_Shard())  # the shard restarted
        assert first.fingerprint != second.fingerprint
        first.close()
        second.close()

    asyncio.run(main())


def test_a_shard_leaves_no_file_of_its_key(monkeypatch, tmp_path):
    """ssl loads a chain only from a file: it is written in a folder only this user may
    enter, the key encrypted, and removed once loaded."""
    monkeypatch.setattr(pinned, "IN_MEMORY", str(tmp_path))
    loaded = []
    load = ssl.SSLContext.load_cert_chain

    def seen(context, path, password=None):
        loaded.append((os.stat(os.path.dirname(path)).st_mode & 0o777,
                       os.stat(path).st_mode & 0o777, pathlib.Path(path).read_bytes()))
        load(context, path, password=password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", seen)
    _, fingerprint = pinned.server_context()
    [(folder_mode, file_mode, pem)] = loaded
    assert (folder_mode, file_mode) == (0o700, 0o600) and b"ENCRYPTED PRIVATE KEY" in pem
    assert list(tmp_path.iterdir()) == [] and len(fingerprint) == 32


def test_a_client_pinning_another_certificate_is_refused_before_the_shard_reads_a_frame(
        tls_on, monkeypatch):
    """Someone in the path who shows a certificate of his own (here: another shard's) gets
    no handshake response from the client, though it knows the shard's secret."""
    answered = []
    handshake = PlaneConnection._handshake

    async def recorded(reader, writer, secret):
        answered.append(secret)
        await handshake(reader, writer, secret)

    monkeypatch.setattr(PlaneConnection, "_handshake", staticmethod(recorded))

    async def main():
        shard = _Shard()
        server, address = await _started(shard)
        other, _ = await _started(_Shard())
        with pytest.raises(PlaneClosed, match="certificate .* is not the one the shard "
                                              "published"):
            await PlaneConnection.open(*address, server.secret, other.fingerprint)
        assert answered == [] and shard.received == [] and not server._serving
        connection = await PlaneConnection.open(*address, server.secret, server.fingerprint)
        assert await connection.call("a", 0, [EVENT], [1]) == ((OK, 0, False, None),)
        await connection.close()
        server.close()
        other.close()

    asyncio.run(main())


def test_a_plaintext_client_is_refused_by_a_tls_shard(tls_on, monkeypatch):
    monkeypatch.setattr(dataplane, "HANDSHAKE_S", 0.5)

    async def main():
        shard = _Shard()
        server, address = await _started(shard)
        with pytest.raises(PlaneClosed):  # it waits for a greeting that never comes
            await PlaneConnection.open(*address, server.secret)
        reader, writer = await asyncio.open_connection(*address)
        writer.write(dataplane._RESPONSE.pack(dataplane.MAGIC, dataplane.PROTOCOL,
                                              bytes(32), bytes(32)))
        # not greeted: the shard closes, at most with a TLS alert
        said = await asyncio.wait_for(reader.read(), 5)
        assert dataplane.MAGIC not in said
        writer.close()
        assert shard.received == [] and not server._serving
        server.close()

    asyncio.run(main())


def test_connections_waiting_for_their_tls_handshake_count_against_admission(tls_on,
                                                                             monkeypatch):
    """A shard shakes hands (TLS, then HMAC) only with connections admission.py admitted:
    a flood of connections that never start TLS holds no more than a source's share, and
    makes room for a client once it has waited past the grace."""
    monkeypatch.setattr(admission, "GRACE_S", 0.1)

    async def main():
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(
            context))
        server, address = await _started(_Shard())
        flood = [socket.create_connection(address) for _ in range(admission.per_source() + 8)]
        await until(lambda: len(server._greeting) == admission.per_source(), 5,
                    "the shard to take in the flood")
        await asyncio.sleep(0.2)
        connection = await PlaneConnection.open(*address, server.secret, server.fingerprint)
        assert await connection.call("a", 0, [EVENT], [1]) == ((OK, 0, False, None),)
        await connection.close()
        for sock in flood:
            sock.close()
        server.close()
        await asyncio.sleep(0.1)
        # none failed: those dropped during their TLS handshake did, in asyncio (3.11), for
        # want of a transport
        assert errors == []

    asyncio.run(main())


def test_auto_serves_tls_unless_the_shard_binds_loopback(monkeypatch):
    monkeypatch.setattr(pinned, "PLANE_TLS", "auto")
    for host in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"):
        assert not pinned.wanted(host), host
    for host in ("10.1.2.3", "192.168.0.7", "0.0.0.0", "::", "fe80::1%eth0",
                 "kairos-worker-0.kairos.svc"):
        assert pinned.wanted(host), host

    async def main():  # on loopback, as `kairos up` binds: plaintext, nothing to pin
        server, address = await _started(_Shard())
        assert server.fingerprint is None
        connection = await PlaneConnection.open(*address, server.secret, server.fingerprint)
        assert connection._writer.get_extra_info("ssl_object") is None
        await connection.close()
        server.close()

    asyncio.run(main())
    monkeypatch.setattr(pinned, "PLANE_TLS", "on")
    assert pinned.wanted("127.0.0.1")
    monkeypatch.setattr(pinned, "PLANE_TLS", "off")
    assert not pinned.wanted("10.1.2.3")


def test_the_setting_takes_auto_on_or_off_only():
    env = {**os.environ, "KAIROS_PLANE_TLS": "yes"}
    run = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0 and "KAIROS_PLANE_TLS must be one of auto, on, off" in run.stderr


def test_a_relay_in_the_path_reads_no_customer_and_cannot_change_a_frame(tls_on):
    async def main():
        shard = _Shard()
        server, address = await _started(shard)
        relay = _Relay(address)
        connection = await PlaneConnection.open(*await relay.start(), server.secret,
                                                server.fingerprint)
        assert await connection.call("a", 0, [EVENT], [1]) == ((OK, 0, False, None),)
        assert shard.received == [EVENT]
        wire = bytes(relay.wire)
        assert CUSTOMER.encode() not in wire and b"purchase" not in wire
        assert dataplane.MAGIC not in wire  # the handshake too
        relay.tamper = True  # a bit of the next frame flipped on its way
        with pytest.raises(PlaneClosed):
            await connection.call("a", 1, [EVENT], [1])
        assert shard.received == [EVENT]  # the shard took nothing changed
        await connection.close()
        relay.close()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("tls", ["auto", "on"])
def test_a_client_refuses_plaintext_off_loopback_before_it_connects(tls, monkeypatch, caplog):
    """Review finding (rev40 d-tls, 2): a shard of an older version publishes no fingerprint,
    and a new client followed it in plaintext across the network without a word."""
    monkeypatch.setattr(pinned, "PLANE_TLS", tls)
    monkeypatch.setattr(dataplane, "_MISMATCHES",
                        dataplane.ThrottledWarning(dataplane.log, dataplane.REFUSED_LOG_S))
    connected = []

    async def refused(*args, **kwargs):
        connected.append(args)
        raise ConnectionRefusedError("nothing listens")

    monkeypatch.setattr(dataplane.asyncio, "open_connection", refused)
    for host in ("10.1.2.3", "fe80::1%eth0", "kairos-worker-0.kairos.svc"):
        with pytest.raises(PlaneClosed, match="published no certificate to pin, off "
                                              "loopback .*run one Kairos version"):
            asyncio.run(PlaneConnection.open(host, 7000, b"s" * 32, None))
    assert connected == []
    assert "published no certificate" in caplog.text  # warned of, as another version is
    for host in ("127.0.0.1", "::1", "localhost"):  # the node's own processes only
        with pytest.raises(PlaneClosed, match="the connection failed"):
            asyncio.run(PlaneConnection.open(host, 7000, b"s" * 32, None))
    assert [host for host, *_ in connected] == ["127.0.0.1", "::1", "localhost"]


def test_a_client_talks_plaintext_off_loopback_when_told_to(monkeypatch):
    monkeypatch.setattr(pinned, "PLANE_TLS", "off")
    connected = []

    async def refused(*args, **kwargs):
        connected.append((args, kwargs))
        raise ConnectionRefusedError("nothing listens")

    monkeypatch.setattr(dataplane.asyncio, "open_connection", refused)
    with pytest.raises(PlaneClosed, match="the connection failed"):
        asyncio.run(PlaneConnection.open("10.1.2.3", 7000, b"s" * 32, None))
    assert connected == [(("10.1.2.3", 7000), {"ssl": None})]


def test_a_client_from_before_tls_is_told_to_run_one_version():
    """Review finding (rev40 d-tls, 2): TLS came without a new protocol, so a client from
    before it (protocol 5) was not told why it failed. (Against a TLS shard it still only
    times out: it speaks no TLS, and a TLS shard says nothing before a ClientHello.)"""
    async def main():
        server, address = await _started(_Shard())  # loopback: plaintext, as before TLS
        reader, writer = await asyncio.open_connection(*address)
        await reader.readexactly(dataplane._CHALLENGE.size)
        writer.write(dataplane._RESPONSE.pack(dataplane.MAGIC, 5, bytes(32), bytes(32)))
        refused = await asyncio.wait_for(reader.read(), 5)
        assert refused[:1] == b"\x00" and refused[2:].decode() == (
            f"this shard speaks protocol {dataplane.PROTOCOL}, the client 5: run one Kairos "
            f"version")
        writer.close()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EACCES])
def test_a_chain_that_cannot_be_written_in_memory_goes_to_the_temp_dir(failure, monkeypatch,
                                                                       tmp_path):
    """Review finding (rev40 d-tls, 4): a /dev/shm that Ray's object store filled (or one
    this user may not write, though it may enter it) failed server_context, and so every
    data_address of that incarnation: the shard was unreachable."""
    memory, temp = tmp_path / "shm", tmp_path / "tmp"
    memory.mkdir()
    temp.mkdir()
    monkeypatch.setattr(pinned, "IN_MEMORY", str(memory))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    written = []
    open_ = os.open

    def full(path, flags, mode=0o777, **kwargs):
        if flags & os.O_CREAT:  # a file written, not a folder opened to remove it
            if str(path).startswith(str(memory)):
                raise OSError(failure, os.strerror(failure), path)
            written.append(path)
        return open_(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", full)
    _, fingerprint = pinned.server_context()
    assert len(fingerprint) == 32
    assert [pathlib.Path(path).parent.parent for path in written] == [temp]
    assert list(memory.iterdir()) == list(temp.iterdir()) == []  # neither kept a file


def test_a_chain_whose_file_cannot_be_removed_still_serves(monkeypatch, tmp_path):
    """What is left holds the key only under a password that is gone: the shard serves."""
    monkeypatch.setattr(pinned, "IN_MEMORY", str(tmp_path))

    def busy(*args, **kwargs):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(os, "unlink", busy)
    _, fingerprint = pinned.server_context()
    assert len(fingerprint) == 32


def _established(port: int) -> list:
    """The shard's side of this process's TCP connections to `port`, still established."""
    return [c for c in psutil.Process().net_connections("tcp")
            if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED]


def test_a_dropped_tls_connection_goes_at_once_with_what_its_socket_holds(tls_on):
    """Review finding: a dropped connection was closed in order unless its transport held
    bytes, and a TLS transport's count leaves out its socket's: a shard dropping a peer
    that sent a bad frame and read no answer waited for the peer's close_notify (asyncio's
    ssl_shutdown_timeout, 30 s), the socket and the answer it held kept all along. A drop
    now aborts: the shard's socket goes at once."""
    handled = []

    async def big(session, seq, requests, routed):
        handled.append(seq)  # its answer is written in this step, before the test goes on
        return ["x" * (16 << 20)]  # more than loopback's socket buffers take

    async def main():
        server = PlaneServer(big)
        host, port = await server.start("127.0.0.1")
        reader, writer = await asyncio.open_connection(host, port,
                                                       ssl=pinned.client_context())
        await _handshake(reader, writer, server.secret)
        writer.transport.pause_reading()  # a peer alive that reads no answer
        writer.write(msgpack.packb([0, "s", 0, [1], [None]]))
        await until(lambda: handled, 5, "the shard to answer")
        writer.write(b"\xc1")  # a byte msgpack never uses: a bad frame
        await until(lambda: not server._serving, 5, "the shard to drop the connection")
        await until(lambda: not _established(port), 5, "the shard's socket to go")
        writer.transport.abort()
        server.close()

    asyncio.run(main())


def test_a_refused_tls_handshake_goes_at_once(tls_on):
    """Review finding: a peer that completed TLS, sent a wrong proof and then neither read nor
    closed kept the shard's socket for asyncio's ssl_shutdown_timeout (30 s), past
    admission's caps (its greeting forgotten): a stranger knowing no secret could hold
    sockets at the connect rate times 30 s. The reason is written, then the socket dropped."""
    async def main():
        server = PlaneServer(lambda *args: [])
        host, port = await server.start("127.0.0.1")
        reader, writer = await asyncio.open_connection(host, port,
                                                       ssl=pinned.client_context())
        challenge = await reader.readexactly(dataplane._CHALLENGE.size)
        assert challenge.startswith(dataplane.MAGIC)
        writer.write(dataplane._RESPONSE.pack(dataplane.MAGIC, dataplane.PROTOCOL,
                                              bytes(dataplane.NONCE_BYTES), bytes(32)))
        writer.transport.pause_reading()  # reads nothing more, sends no close_notify
        await until(lambda: _established(port), 5, "the shard's side of the connection")
        await until(lambda: not _established(port), 5, "the refused socket to go")
        writer.transport.abort()
        server.close()

    asyncio.run(main())
