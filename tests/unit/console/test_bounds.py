"""What the console takes from anyone who reaches it: form bodies by route, framed by their
length (a form is parsed before its CSRF token is checked), text fields only, and a request's
head within HEAD_S (heads.py)."""
from __future__ import annotations

import socket
import sys
import time

import pytest

from kairos.cluster.console.app import MAX_BODY_BYTES
from kairos.cluster.console.guard import FORM_BYTES
from tests.unit.console.serving import serving
from tests.unit.console.test_app import RESPOND, client, gateway, sign_in  # noqa: F401


def test_a_form_past_its_bound_is_refused_before_it_is_parsed(client):  # noqa: F811
    """1 MiB of "&" (no field, so no field limit stops it) cost 0.44 s of the loop's CPU."""
    flood = "&" * (FORM_BYTES + 1)
    refused = client.post("/signin", content=flood,
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert refused.status_code == 413 and f"at most {FORM_BYTES} bytes" in refused.text
    token = sign_in(client)
    # a draft catalog may still be as long as the gateway takes
    draft = "# " + "x" * (MAX_BODY_BYTES // 2) + "\ncatalog: {}\n"
    checked = client.post("/operator/validate", data={"catalog": draft, "csrf": token})
    assert checked.status_code != 413
    assert client.post("/customer/respond", data={**RESPOND, "csrf": token,
                                                    "pad": "x" * FORM_BYTES}).status_code == 413


def test_a_file_where_a_field_is_read_is_a_bad_request(client, gateway):  # noqa: F811
    token = sign_in(client)
    fields = {k: v for k, v in RESPOND.items() if k != "customer_id"}
    sent = client.post("/customer/respond", data={**fields, "csrf": token},
                       files={"customer_id": ("hostname", b"ana")})
    assert sent.status_code == 400 and gateway.responses == []


SERVE = """
import sys
from kairos.cluster.console import guard, heads, server
from kairos.cluster.console.app import ConsoleConfig
from kairos.cluster.gateway.auth import Auth
heads.HEAD_S = guard.BODY_S = 1.0
server.serve(ConsoleConfig("127.0.0.1:1"), Auth.load(None),
             server.Listen("127.0.0.1", int(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def console_log(tmp_path_factory):
    return tmp_path_factory.mktemp("console") / "stderr"


@pytest.fixture(scope="module")
def console_port(console_log):
    """A real uvicorn, as `kairos console` runs it (heads and bodies given 1 s)."""
    with open(console_log, "wb") as stderr, \
            serving(lambda port: [sys.executable, "-c", SERVE, str(port)], stderr=stderr) as port:
        yield port


def closed_within(connection: socket.socket, seconds: float) -> bool:
    """Whether the console closed `connection` within `seconds` (after any answer it sent)."""
    connection.settimeout(seconds)
    try:
        while connection.recv(65536):
            pass
        return True
    except TimeoutError:
        return False


def test_a_connection_that_never_finishes_a_head_is_closed(console_port):
    """uvicorn kept it until its peer went, so silent sockets could take every descriptor."""
    with socket.create_connection(("127.0.0.1", console_port)) as silent, \
            socket.create_connection(("127.0.0.1", console_port)) as half:
        half.sendall(b"GET /signin HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert closed_within(silent, 10) and closed_within(half, 10)
    # and between requests: after an answer, the next head has the same time
    with socket.create_connection(("127.0.0.1", console_port)) as kept:
        kept.sendall(b"GET /signin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        kept.settimeout(10)
        assert kept.recv(64).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /signin HTTP/1.1\r\n")  # the next head, never finished
        assert closed_within(kept, 10)


def test_a_head_sent_in_time_is_answered(console_port):
    with socket.create_connection(("127.0.0.1", console_port)) as slow:
        slow.sendall(b"GET /signin HTTP/1.1\r\n")
        time.sleep(0.5)
        slow.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        slow.settimeout(10)
        assert slow.recv(64).startswith(b"HTTP/1.1 200")


def test_a_chunked_body_cannot_pass_the_bound_under_a_short_length(console_port):
    """h11 frames a request that gives both by its chunks: a length of 10 let 4 MiB of "&"
    through to the parser."""
    with socket.create_connection(("127.0.0.1", console_port), timeout=10) as sent:
        body = b"&" * (FORM_BYTES + 1)
        sent.sendall(b"POST /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        assert sent.recv(64).startswith(b"HTTP/1.1 413")


def test_a_body_that_never_comes_is_answered_408(console_port):
    """The head's deadline ends with the head: a form posted with its length and a part of its
    body held the request, and the connection, for good."""
    with socket.create_connection(("127.0.0.1", console_port), timeout=10) as stalled:
        stalled.sendall(b"POST /signin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\n"
                        b"Content-Length: 100\r\n\r\nk=")
        answer = stalled.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower()
        assert closed_within(stalled, 10)  # at once, not after another head's deadline


def test_a_sender_that_leaves_mid_body_leaves_no_traceback(console_port, console_log):
    """Starlette's ClientDisconnect reached uvicorn: some 40 lines of ERROR a connection, which
    anyone could send to /signin for nothing."""
    with socket.create_connection(("127.0.0.1", console_port), timeout=10) as left:
        left.sendall(b"POST /signin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 100\r\n\r\nk=")
        time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", console_port), timeout=10) as after:
        after.sendall(b"GET /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert after.recv(64).startswith(b"HTTP/1.1 200")  # the first was handled meanwhile
    assert b"Traceback" not in console_log.read_bytes()


def test_a_route_for_agents_sends_visitors_to_sign_in_before_reading_a_body(client):  # noqa: F811
    """A draft catalog's 1 MiB was parsed for anyone before the sign-in check (0.66 s of CPU
    for 1 MiB of "&"): a body no parser takes shows it is not read now. A search sent as the
    session ended goes on to sign in, not to a stale token's 403."""
    garbled = client.post("/operator/validate", content=b"--x\r\n" * 1000, headers={
        "content-type": "multipart/form-data; boundary=y"}, follow_redirects=False)
    assert garbled.status_code == 303 and garbled.headers["location"].startswith("/signin")
    search = client.post("/customer/find", data={"by": "email", "q": "ana@example.com"},
                         follow_redirects=False)
    assert search.status_code == 303 and "ana" not in search.headers["location"]
