"""A small blocking gRPC client of a Kairos gateway, for the command line and the demo."""
from __future__ import annotations

import os
import socket
from typing import Any, Iterator

import grpc

from kairos.core.errors import not_text
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster.secret_files import SecretFileError, check_secret_file
from kairos.cluster.cli.targets import NOT_TCP, split_target
from kairos.cluster.gateway import wire
from kairos.cluster.gateway.auth import METADATA_KEY, is_loopback

KEY_ENV = "KAIROS_API_KEY"
# else the file holding the key: on Kubernetes a mounted Secret, kept out of the environment
# that every process of the pod inherits
KEY_FILE_ENV = "KAIROS_API_KEY_FILE"
# TLS to the gateway: the CA that signed its certificate; for mTLS also this client's
# certificate and key (PEM files).
TLS_ENV = ("KAIROS_TLS_CA", "KAIROS_TLS_CERT", "KAIROS_TLS_KEY")
TIMEOUT_S = 10.0
# set to 1: plaintext to a gateway off this machine is accepted (its keys cross in clear)
INSECURE_ENV = "KAIROS_INSECURE"


def tls_credentials() -> grpc.ChannelCredentials | None:
    """TLS to a gateway when KAIROS_TLS_CA is set (with this client's certificate for mTLS),
    else None: plaintext. SystemExit when a file cannot be read, or the key's file is refused
    (a secret's file: see check_secret_file)."""
    ca, cert, key = (os.environ.get(name) for name in TLS_ENV)
    if not ca:
        return None

    def read(path: str | None, name: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise SystemExit(f"error: {name} {path}: {exc.strerror}") from None
    if key:
        try:
            check_secret_file(key, TLS_ENV[2])
        except SecretFileError as exc:
            raise SystemExit(f"error: {exc}") from None
    return grpc.ssl_channel_credentials(*(read(path, name) for path, name
                                          in ((ca, TLS_ENV[0]), (key, TLS_ENV[2]),
                                              (cert, TLS_ENV[1]))))


def channel_to(target: str, *, aio: bool = False, options: tuple = ()
               ) -> grpc.Channel | grpc.aio.Channel:
    """A channel to a gateway (see tls_credentials): blocking, or asyncio's with `aio`.
    SystemExit for plaintext that channel_refusal refuses."""
    credentials = tls_credentials()
    refusal = channel_refusal(target)
    if refusal:
        raise SystemExit(f"error: {refusal}")
    api = grpc.aio if aio else grpc
    return api.insecure_channel(target, options) if credentials is None \
        else api.secure_channel(target, credentials, options)


def channel_refusal(target: str) -> str | None:
    """Why `channel_to(target)` would refuse: plaintext_refusal, unless this client speaks
    TLS (KAIROS_TLS_CA set)."""
    return None if os.environ.get(TLS_ENV[0]) else plaintext_refusal(target)


def plaintext_refusal(target: str) -> str | None:
    """Why plaintext gRPC to `target` is refused: it leaves this machine (a target that is no
    loopback address, nor a Unix or VM socket) and ${INSECURE_ENV} is not 1; None when it is
    not refused. A target this cannot read is refused too, but a socket's: gRPC may still dial
    it (a port past 65535 is taken modulo 65536, a host alone on port 443)."""
    if os.environ.get(INSECURE_ENV, "").strip() == "1" or target.startswith(NOT_TCP):
        return None
    try:
        if is_loopback(split_target(target)[0].lower().rstrip(".")):
            return None
    except ValueError:  # NotOneAddress too
        pass
    return (f"refusing plaintext gRPC to {target}: the API key, and every request and answer, "
            f"would cross the network in clear. Have the gateway serve TLS (--tls-cert) and "
            f"set {TLS_ENV[0]} to the CA file that signed its certificate, reach it through "
            f"a loopback address (an SSH tunnel, `kubectl port-forward`), or set "
            f"{INSECURE_ENV}=1 to accept that")


def tls_hint() -> str:
    """What to check when something accepts connections at a gateway's target and gRPC still
    could not connect there (a plaintext client on a TLS gateway, a CA that did not sign the
    gateway's certificate)."""
    ca, cert, key = TLS_ENV
    if not os.environ.get(ca):
        return (f"something accepts connections there, but not plaintext gRPC: does the gateway "
                f"serve TLS? set {ca} to the CA file that signed its certificate (and {cert} "
                f"and {key} when it requires client certificates)")
    return (f"something accepts connections there, but no TLS connection was made: does the "
            f"gateway serve TLS, did the CA in {ca} ({os.environ[ca]}) sign its certificate, "
            f"and does it require a client certificate ({cert}, {key})?")


def api_key_from_env() -> str | None:
    """The key in KAIROS_API_KEY, else the one in the file KAIROS_API_KEY_FILE names (a
    secret's file: see check_secret_file), else None. SystemExit when that file is refused or
    cannot be read."""
    key, path = os.environ.get(KEY_ENV), os.environ.get(KEY_FILE_ENV)
    if key or not path:
        return key
    try:
        check_secret_file(path, KEY_FILE_ENV)
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except SecretFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"error: {KEY_FILE_ENV} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SystemExit(f"error: {KEY_FILE_ENV} {path}: {not_text(exc)}") from None




Customer = str | tuple[str, str]  # a customer id, or an alias (type, value)


def _named(customer: Customer) -> dict[str, Any]:
    if isinstance(customer, str):
        return {"customer_id": customer}
    return {"alias": pb.Alias(type=customer[0], value=customer[1])}


class Remote:
    def __init__(self, target: str, api_key: str | None = None):
        self.target = target
        self.channel = channel_to(target)
        key = api_key or api_key_from_env()
        self.metadata = ((METADATA_KEY, key),) if key else ()
        self.decisions = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def wait_ready(self, timeout_s: float = 5.0) -> None:
        """Return once the gateway answers; OSError at once when nothing listens at the
        target's TCP address (gRPC would keep retrying), grpc.FutureTimeoutError after
        `timeout_s`."""
        try:
            address = split_target(self.target)
        except ValueError:  # a Unix socket, several addresses: gRPC's own wait alone
            address = None
        if address is not None:
            with socket.create_connection(address, timeout=timeout_s):
                pass
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def ingest(self, customer: Customer, event_type: str, when: float,
               attributes: dict[str, Any], channel: str = "") -> pb.IngestAck:
        event = pb.Event(type=event_type, channel=channel, time=wire.time_out(when),
                         **_named(customer))
        for name, value in attributes.items():
            event.attributes[name].CopyFrom(wire.value_out(value))
        return self.decisions.Ingest(event, timeout=TIMEOUT_S, metadata=self.metadata)

    def decide(self, customer: Customer, channel: str, placement: str = "",
               context: dict[str, Any] | None = None) -> pb.Decision:
        request = pb.DecideRequest(channel=channel, placement=placement, **_named(customer))
        for name, value in (context or {}).items():
            request.context[name].CopyFrom(wire.value_out(value))
        return self.decisions.Decide(request, timeout=TIMEOUT_S, metadata=self.metadata)

    def link(self, alias: tuple[str, str], customer_id: str) -> pb.LinkAck:
        return self.decisions.LinkIdentity(
            pb.LinkRequest(alias=pb.Alias(type=alias[0], value=alias[1]),
                           customer_id=customer_id), timeout=TIMEOUT_S, metadata=self.metadata)

    def watch(self, customer_id: str, channel: str, placement: str = "") -> Iterator[pb.Decision]:
        return self.decisions.WatchDecisions(
            pb.WatchRequest(customer_id=customer_id, channel=channel, placement=placement),
            metadata=self.metadata)

    def status(self, timeout_s: float = TIMEOUT_S) -> admin_pb2.ClusterStatus:
        return self.admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=timeout_s,
                                           metadata=self.metadata)

    def drain(self, node_id: str, timeout_s: float) -> admin_pb2.DrainNodeResponse:
        return self.admin.DrainNode(admin_pb2.DrainNodeRequest(node_id=node_id),
                                    timeout=timeout_s, metadata=self.metadata)

    def put_catalog(self, text: str, evidence_json: str = "", expected_version: str = ""
                    ) -> admin_pb2.CatalogInfo:
        return self.admin.PutCatalog(
            admin_pb2.CatalogText(yaml=text, evidence_json=evidence_json,
                                  expected_current_version=expected_version),
            timeout=120, metadata=self.metadata)

    def rollback_catalog(self, to_version: str) -> admin_pb2.CatalogInfo:
        return self.admin.RollbackCatalog(admin_pb2.RollbackCatalogRequest(to_version=to_version),
                                          timeout=120, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
