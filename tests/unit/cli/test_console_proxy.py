"""`kairos console --proxy ADDR`: one IP address, and no waiver of the refusal of plain HTTP
on an address other than loopback (the proxy's hop to the console crosses the network too).
What the console then believes of that proxy: tests/unit/console/test_proxy.py."""
from __future__ import annotations

import pytest

from kairos.cluster.cli.console import run
from kairos.cluster.cli.main import parser


@pytest.mark.parametrize("given, kept", [("10.0.0.1", "10.0.0.1"), ("::1", "::1"),
                                         ("fd00:0::0:7", "fd00::7")])
def test_the_proxy_is_an_ip_address(given, kept):
    assert parser(50051).parse_args(["console", "--proxy", given]).proxy == kept


@pytest.mark.parametrize("given", ["*", "proxy.example", "10.0.0.0/8", "10.0.0.1,10.0.0.2",
                                   "", "::1%a,127.0.0.1", "fe80::1%eth0"])
def test_anything_else_is_refused(given, capsys):
    """`*` would believe every peer (any client could say HTTPS, or sign in from a new address
    at each guess); a name, which uvicorn would compare as it is with the peer's address,
    none."""
    with pytest.raises(SystemExit) as exited:
        parser(50051).parse_args(["console", "--proxy", given])
    assert exited.value.code == 2
    assert "--proxy: must be the proxy's IP address" in capsys.readouterr().err


def test_a_proxy_does_not_waive_tls_on_another_address(capsys):
    args = parser(50051).parse_args(["console", "--host", "10.0.0.5", "--proxy", "10.0.0.1"])
    assert run(args) == 2
    assert "--host 10.0.0.5 without --tls-cert would send agents' keys and session cookies " \
        "in clear from the proxy 10.0.0.1 to the console: serve HTTPS, or say --insecure" \
        in capsys.readouterr().err


def test_uvicorn_is_given_the_proxy_as_one_address_not_a_list_to_split(monkeypatch):
    """A string is split on commas by uvicorn: an address given so, a zone holding a comma
    past ipaddress's check, would have believed a second peer."""
    import uvicorn

    from kairos.cluster.console import server
    from kairos.cluster.console.app import ConsoleConfig
    from kairos.cluster.gateway.auth import Auth
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    server.serve(ConsoleConfig("127.0.0.1:1"), Auth.load(None),
                 server.Listen("127.0.0.1", 1, proxy="127.0.0.2"))
    assert seen["forwarded_allow_ips"] == ["127.0.0.2"] and seen["proxy_headers"]
