"""The Host names the console answers, from its bind address and `kairos console
--allowed-host` (or $KAIROS_CONSOLE_ALLOWED_HOSTS)."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import psutil
import pytest

from kairos.cluster.cli.console import HOSTS_ENV, run
from kairos.cluster.cli.main import parser
from kairos.cluster.console import server
from kairos.cluster.console.server import served_hosts

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@pytest.fixture(autouse=True)
def interfaces(monkeypatch):
    """A machine with an IPv4 and an IPv6 address, a link-local one and a MAC address."""
    def addr(family, address):
        return SimpleNamespace(family=family, address=address)
    monkeypatch.setattr(server.psutil, "net_if_addrs", lambda: {
        "lo": [addr(socket.AF_INET, "127.0.0.1"), addr(socket.AF_INET6, "::1")],
        "eth0": [addr(socket.AF_INET, "10.1.2.3"), addr(socket.AF_INET6, "fd00:0::9"),
                 addr(socket.AF_INET6, "fe80::1%eth0"), addr(psutil.AF_LINK, "02:42:ac:11")]})


@pytest.mark.parametrize("bind, names, hosts", [
    ("127.0.0.1", (), LOOPBACK),
    ("::1", (), LOOPBACK),
    ("localhost", ["Console.Example"], LOOPBACK + ("console.example",)),
    ("127.0.0.2", (), LOOPBACK + ("127.0.0.2",)),
    ("10.0.0.5", ["console.example", "*.agents.example"],
     ("10.0.0.5", "console.example", "*.agents.example")),
    ("fd00::5", ["fd00::6", "[fd00::7]"], ("[fd00::5]", "[fd00::6]", "[fd00::7]")),
    # as browsers write an IPv6 address in Host: compressed
    ("fd00:0:0::5", ["FD00:0::0:6"], ("[fd00::5]", "[fd00::6]")),
    # every interface: each of the machine's addresses too (a Host a rebinding page cannot
    # send), but a link-local one, whose zone no Host header carries
    ("0.0.0.0", ["console.example"], LOOPBACK + ("10.1.2.3", "[fd00::9]", "console.example")),
])
def test_the_hosts_of_a_bind_address_and_the_operators_names(bind, names, hosts):
    assert served_hosts(bind, names, tls=True) == hosts


@pytest.mark.parametrize("name", ["*", "console*.example", "console.example:8443",
                                  "https://console.example", " ", "*.com", "*.", "a b",
                                  "-console.example", "console..example"])
def test_a_name_that_matches_nothing_or_too_much_is_refused(name):
    """`*.com` would admit a page of any .com site that an attacker rebinds."""
    with pytest.raises(ValueError):
        served_hosts("127.0.0.1", [name], tls=True)


def test_names_come_from_the_option_and_the_environment(monkeypatch):
    monkeypatch.setenv(HOSTS_ENV, "console.example, ,agents.example")
    args = parser(50051).parse_args(["console", "--allowed-host", "desk.example"])
    assert args.allowed_host == ["console.example", "agents.example", "desk.example"]


def test_kairos_console_refuses_a_name_with_its_port(capsys):
    args = parser(50051).parse_args(["console", "--allowed-host", "console.example:8443"])
    assert run(args) == 2
    assert f"--allowed-host or ${HOSTS_ENV}: 'console.example:8443': give the name without " \
        "its port" in capsys.readouterr().err


def test_a_wildcard_name_needs_https():
    """Over plain HTTP the cookies keep their plain names, which any subdomain of a wildcard
    can set for the console (session fixation, login CSRF): only __Host- names, over HTTPS,
    cannot be."""
    with pytest.raises(ValueError, match="plain HTTP"):
        served_hosts("10.0.0.5", ["console.example", "*.agents.example"], tls=False)
    assert served_hosts("10.0.0.5", ["console.example"], tls=False) == ("10.0.0.5",
                                                                       "console.example")
