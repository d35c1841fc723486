"""The tls-alpn-01 challenge (RFC 8737): the certificate a validator must be shown, and the context that shows it.

acme 5 dropped its own helpers for this challenge; the certificate is a few lines of cryptography.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from .hello import ACME_TLS_1

ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier


def challenge_certificate(domain: str, key_authorization: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate for `domain` alone, carrying the SHA-256 of `key_authorization` in the critical
    acmeIdentifier extension, and its key."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # The extension's value is the DER encoding of an OCTET STRING holding the digest.
    return self_signed(domain, datetime.timedelta(days=7), x509.UnrecognizedExtension(ACME_IDENTIFIER,
                                                                                      b"\x04\x20" + digest))


def self_signed(domain: str, lifetime: datetime.timedelta, critical: x509.ExtensionType | None = None
                ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 certificate for `domain` alone, valid from a day ago for `lifetime`, with a `critical`
    extension if given; and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
    )
    if critical is not None:
        builder = builder.add_extension(critical, critical=True)
    return builder.sign(key, hashes.SHA256()), key


def challenge_context(domain: str, key_authorization: str) -> SSL.Context:
    """The context a validator's `acme-tls/1` connection is handshaken with: the challenge certificate, the
    `acme-tls/1` protocol, no client certificate asked for."""
    certificate, key = challenge_certificate(domain, key_authorization)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.use_certificate(certificate)
    ctx.use_privatekey(key)
    ctx.set_alpn_select_callback(_choose_acme_tls_1)
    return ctx


def _choose_acme_tls_1(_conn: SSL.Connection, offered: list[bytes]) -> bytes | object:
    return ACME_TLS_1 if ACME_TLS_1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS
