"""A small X.509 toolkit for local test PKIs: `flask dev-certs` and the test suite.

Certificates are made the way public CAs make them today: leaves carry the
serverAuth extended key usage only, so a local set-up meets the same TLS
obstacles as a real Quay (see docs/architecture.md).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(
    common_name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    names: list[str] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: datetime.datetime | None = None,
    days: int = 365,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> Issued:
    """Make a certificate: a self-signed root when `issuer` is None, else one signed by it.

    A leaf (ca=False) gets `names` as subject alternative names and `eku`
    (default: serverAuth only, as public CAs issue them since 2026). The key is a new
    P-256 one unless given.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start = not_before or now - _DAY
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + days * _DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
            crl_sign=ca, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    if not ca:
        builder = builder.add_extension(_san(names or [common_name]), critical=False)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if eku is None else eku
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert=cert, key=key)


def write_pair(issued: Issued, cert_path: Path, key_path: Path, *chain: Issued) -> None:
    """Write a certificate (followed by `chain`, leaf first) and its key, the key private."""
    cert_path.write_bytes(issued.cert_pem + b"".join(c.cert_pem for c in chain))
    key_path.touch(mode=0o600)
    key_path.write_bytes(issued.key_pem)


def make_dev_pki(directory: Path) -> dict[str, Path]:
    """Create a local PKI for trying the service: a root, a server pair, a Quay-like client pair.

    Returns the paths written, by role. The "quay" pair is what a genuine Quay
    would present: a serverAuth-only certificate for quay.io, issued through an
    intermediate; point QUAY_CA_FILE at ca.pem to trust it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    root = issue("quay-dispatch dev root CA", ca=True, days=3650)
    intermediate = issue("quay-dispatch dev intermediate CA", issuer=root, ca=True, days=3650)
    server = issue("localhost", issuer=intermediate, names=["localhost", "127.0.0.1", "::1"])
    quay = issue("quay.io", issuer=intermediate, names=["quay.io", "*.quay.io"])
    paths = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "quay_cert": directory / "quay.pem",
        "quay_key": directory / "quay.key",
    }
    paths["ca"].write_bytes(root.cert_pem)
    write_pair(server, paths["server_cert"], paths["server_key"], intermediate)
    write_pair(quay, paths["quay_cert"], paths["quay_key"], intermediate)
    return paths
