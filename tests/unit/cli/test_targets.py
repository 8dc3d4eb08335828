"""The one TCP address a gRPC target names, read as gRPC reads it (cluster/cli/targets.py)."""
from __future__ import annotations

import socket

import pytest

from kairos.cluster.cli.targets import answers, join_target, split_target


@pytest.mark.parametrize("target, address", [
    ("127.0.0.1:50051", ("127.0.0.1", 50051)),
    ("kairos-gateway:50051", ("kairos-gateway", 50051)),
    ("[::1]:50052", ("::1", 50052)),
    ("dns:///127.0.0.1:7", ("127.0.0.1", 7)),
    ("dns://10.0.0.2:53/kairos-gateway:7", ("kairos-gateway", 7)),  # the DNS server's authority
    ("dns:kairos-gateway:7", ("kairos-gateway", 7)),
    ("ipv4:127.0.0.1:7", ("127.0.0.1", 7)),
    ("ipv6:[::1]:7", ("::1", 7)),
    ("localhost", ("localhost", 443)),  # gRPC's port when none is named
    ("[::1]", ("::1", 443)),
    ("::1", ("::1", 443)),  # without brackets, every colon is the address's
])
def test_a_target_names_its_host_and_port(target, address):
    assert split_target(target) == address


@pytest.mark.parametrize("target", [
    "unix:/run/kairos.sock", "unix:///run/kairos.sock", "unix-abstract:kairos", "vsock:3:50051",
    "ipv4:127.0.0.1:7,127.0.0.2:7", "host:port", ":50051", "[::1:50051", "host:70000"])
def test_a_target_that_names_no_one_tcp_address_is_refused(target):
    with pytest.raises(ValueError):
        split_target(target)


@pytest.mark.parametrize("host, port, target", [
    ("127.0.0.1", 7, "127.0.0.1:7"), ("fd00::9", 7, "[fd00::9]:7"), ("gw", 7, "gw:7")])
def test_a_host_and_port_join_into_a_target(host, port, target):
    assert join_target(host, port) == target
    assert split_target(target) == (host, port)


def test_answers_looks_at_the_address_behind_the_scheme():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert answers(f"ipv4:127.0.0.1:{port}") and answers(f"dns:///127.0.0.1:{port}")
    assert not answers(f"ipv4:127.0.0.1:{port}")  # closed
    with pytest.raises(ValueError):
        answers("unix:/run/kairos.sock")
