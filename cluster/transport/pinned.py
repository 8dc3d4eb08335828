"""TLS for the data plane (dataplane.py), with a certificate pinned per shard incarnation.

Off loopback the data plane crosses a network others share (a pod network, a data centre's
LAN): without TLS anyone on the path reads events, decisions and profiles, and can inject
frames after the HMAC handshake, which authenticates only the connection's start. So a shard
that binds an address other than loopback serves TLS (1.3), with a key and a self-signed
certificate made in memory for its incarnation, and publishes the certificate's SHA-256
fingerprint through Ray with its address and secret. A client checks no CA and no host name:
it refuses the connection unless the certificate the peer shows has that fingerprint, before
it answers the HMAC challenge (which stays, inside TLS). On loopback only the node's own
processes are on the path, and TLS would only cost CPU: setting PLANE_TLS (auto|on|off)
forces either way. A client refuses a shard off loopback that published no fingerprint (an
older version's) unless PLANE_TLS is off: it never falls back to plaintext unasked.

The fingerprint travels in Ray's own calls, as the secret does: an attacker who can rewrite
those (Ray's traffic is plaintext unless Ray's TLS is on) can have a client trust his
certificate. One who only reads them learns the secret, and with it can connect to the shard
as a client does (read profiles, send events): TLS does not limit that, only Ray's own TLS
does. He learns nothing that decrypts other clients' connections (the key never leaves the
shard's process, and TLS 1.3's key exchange is ephemeral).
"""
from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kairos.cluster.settings import PLANE_TLS

# The certificate's dates: nothing checks them (a client checks the pin, not the dates, so a
# shard that lives longer serves on), they only bound what the certificate would be worth to
# something that does. Backdated a little for peers whose clocks lag.
VALID_FOR = datetime.timedelta(days=1)
BACKDATED = datetime.timedelta(minutes=5)
# Where the chain's file is written for ssl to load, when it can be: memory, not a disk
IN_MEMORY = "/dev/shm"


class NotPinned(ConnectionError):
    """The peer's certificate is not the one the shard published: not that shard."""


def loopback(host: str) -> bool:
    """Whether `host` is a loopback address (a host name other than localhost may resolve to
    any address, so it is not)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone
    except ValueError:
        return host == "localhost"
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def wanted(host: str) -> bool:
    """Whether a shard binding `host` serves TLS: by the setting PLANE_TLS, and when it says
    "auto", unless `host` is a loopback address."""
    if PLANE_TLS != "auto":
        return PLANE_TLS == "on"
    return not loopback(host)


def plaintext_refused(host: str) -> str | None:
    """Why a client refuses to talk plaintext to a shard at `host` that published no
    fingerprint, or None where it may: off loopback only a shard of an older Kairos version
    serves plaintext unasked, and a client that followed it would cross the network in the
    clear without anyone having chosen to."""
    if PLANE_TLS == "off" or loopback(host):
        return None
    return ("it published no certificate to pin, off loopback (a shard of an older Kairos "
            "version): run one Kairos version, or set KAIROS_PLANE_TLS=off for plaintext")


def server_context() -> tuple[ssl.SSLContext, bytes]:
    """A TLS context serving a new key and certificate (this incarnation's), and the
    certificate's fingerprint to publish."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kairos data plane")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - BACKDATED).not_valid_after(now + VALID_FOR)
                   .sign(key, hashes.SHA256()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = 0  # a client connects once and keeps the connection: no resumption
    _load_chain(context, certificate.public_bytes(serialization.Encoding.PEM), key)
    return context, fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def _load_chain(context: ssl.SSLContext, certificate: bytes,
                key: ec.EllipticCurvePrivateKey) -> None:
    """Load the chain into `context`. ssl loads one only from a file: the key goes there
    encrypted under a password that stays in memory, in a directory only this user may enter
    (mkdtemp's 0700), for as long as the load takes; in memory where that can be written,
    else in the temp dir (which may be on disk)."""
    password = secrets.token_bytes(32)
    pem = certificate + key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(password))
    for parent in (IN_MEMORY, None):
        try:
            # a file left behind holds nothing usable without the password: a failed removal
            # must not leave the shard without TLS, and so unreachable, for its incarnation
            with tempfile.TemporaryDirectory(prefix="kairos-plane-", dir=parent,
                                             ignore_cleanup_errors=True) as folder:
                path = os.path.join(folder, "chain.pem")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                          "wb") as file:
                    file.write(pem)
                context.load_cert_chain(path, password=password)
                return
        except OSError:  # /dev/shm missing, not this user's to write, or full (Ray's store)
            if parent is None:
                raise


async def start_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext) -> None:
    """TLS on a shard's end of an accepted connection, or ConnectionResetError."""
    plain = writer.transport
    try:
        await writer.start_tls(context)
    except AttributeError:
        if writer.transport is not None:
            raise
        # closed during the handshake (admission.py made room): asyncio (3.11) then gives
        # the writer no transport and trips over it, as its close() and __del__ would
        writer._transport = plain
        raise ConnectionResetError("closed during the TLS handshake") from None


@functools.cache
def client_context() -> ssl.SSLContext:
    """A client's TLS context: no CA and no host name to check, the pin (`check`) instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fingerprint(der: bytes) -> bytes:
    """A certificate's SHA-256 fingerprint, of its DER form."""
    return hashlib.sha256(der).digest()


def check(ssl_object: ssl.SSLObject | None, pinned: bytes) -> None:
    """NotPinned unless the peer of a TLS connection showed the certificate whose
    fingerprint is `pinned`."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    shown = fingerprint(der) if der else b""
    if not hmac.compare_digest(shown, pinned):
        raise NotPinned(f"its certificate (sha256 {shown.hex()[:16] or 'none'}…) is not the "
                        f"one the shard published ({pinned.hex()[:16]}…)")
