"""A throwaway PKI minted for a test: TLS on the gateway and on the Redis store."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(name: str, key, issuer=None, issuer_key=None, ca=False, usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def mint() -> dict:
    """A CA, a server certificate for 127.0.0.1 and localhost and a client certificate, as PEM
    bytes (`ca`; `server` and `client` as (certificate, key)); and a foreign CA with a server
    and a client certificate of its own under `foreign_...` (the same names: only the issuer
    tells them apart)."""
    out = {}
    for prefix in ("", "foreign_"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("kairos test CA", ca_key, ca=True)
        out[prefix + "ca"] = ca.public_bytes(serialization.Encoding.PEM)
        for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                            ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _certificate(f"kairos {role}", key, ca, ca_key, usage=usage)
            out[prefix + role] = (cert.public_bytes(serialization.Encoding.PEM), _pem(key))
    return out


def write(folder: Path) -> dict[str, Path]:
    """`mint()` as PEM files in `folder`: `ca`, `server_cert`, `server_key`, `client_cert`,
    `client_key`, and the same with `foreign_` before them."""
    files = {}
    for name, value in mint().items():
        pems = {"": value} if isinstance(value, bytes) else dict(zip(("_cert", "_key"), value))
        for suffix, pem in pems.items():
            files[name + suffix] = folder / f"{name}{suffix}.pem"
            files[name + suffix].write_bytes(pem)
    return files
