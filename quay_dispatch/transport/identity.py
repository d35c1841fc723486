"""Identity: does a presented certificate chain prove that the caller is Quay?

The chain must satisfy what a browser would ask of Quay's own web server: it
leads to a trusted root, is within its validity period, allows serverAuth, and
is valid for one of the configured host names. Quay presents its TLS server
certificate as its client certificate, so that is exactly the proof we need.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import unquote

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ..base.printable import printable

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


CACHE_ENTRIES = 1024
SUCCESS_CACHE_SECONDS = 3600.0
REFUSAL_CACHE_SECONDS = 60.0


class IdentityError(Exception):
    """The caller is not Quay; the message says why, for the 403 answer and the log.

    `names_quay`: the refused certificate names one of Quay's host names. It is Quay's own, from a CA the service
    does not trust or out of its validity, or somebody's forgery of it: worth telling the operator either way.
    """

    def __init__(self, message: str, names_quay: bool = False, names: str | None = None):
        super().__init__(message)
        self.names_quay = names_quay
        self.names = names  # the refused certificate's subject and DNS names, as describe() says them


@dataclass(frozen=True)
class Caller:
    """A caller proven to be Quay."""

    hostname: str
    valid_until: float  # seconds since the epoch: when the chain stops being valid


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """Parse every PEM certificate in `data`, naming `source` in errors.

    A handful of roots in the Mozilla bundle (GoDaddy and Starfield G2 among
    them) have a serial number of zero, which RFC 5280 forbids and cryptography
    warns about on every load. They are widely used trust anchors, so they are
    kept and that one warning is silenced here, on purpose, instead of being
    printed at every start.
    """
    certs = []
    for block in _PEM_BLOCK.findall(data):
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*serial number.*", category=CryptographyDeprecationWarning
            )
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError as exc:
                raise ValueError(f"{source} holds a certificate that cannot be parsed: {exc}") from None
    if not certs and data.strip():
        raise ValueError(f"{source} is not a PEM certificate")
    return certs


def load_roots(ca_file: str | None) -> list[x509.Certificate]:
    """Trusted roots: `ca_file` (QUAY_CA_FILE) or, by default, certifi's Mozilla bundle."""
    path = ca_file or certifi.where()
    with open(path, "rb") as f:
        roots = load_certificates(f.read(), path)
    if not roots:
        raise ValueError(f"{path} is not a PEM certificate")
    return roots


def dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS names (subjectAltName); none when it has none, or extensions that do not parse."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return san.get_values_for_type(x509.DNSName)


def describe(cert: x509.Certificate) -> str:
    """A short human description of a certificate: its subject and DNS names."""
    names = dns_names(cert)
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    return f"{subject} (DNS names: {', '.join(names) or 'none'})"


class QuayVerifier:
    """Checks presented chains against trusted roots and Quay's host names."""

    def __init__(self, hostnames: tuple[str, ...], roots: list[x509.Certificate],
                 intermediates: list[x509.Certificate] | None = None):
        self.hostnames = hostnames
        self._store = Store(roots)
        # QUAY_INTERMEDIATES_FILE: for a proxy that forwards the leaf alone. Offered as
        # intermediates only, never trusted as roots.
        self._extra_intermediates = intermediates or []
        self._cache: OrderedDict[bytes, tuple[Caller | tuple, float]] = OrderedDict()  # result, or refusal's args
        self._lock = threading.Lock()
        now = datetime.datetime.now(datetime.UTC)
        for hostname in hostnames:  # a name cryptography cannot check stops the start, not every call
            self._verifier(hostname, now)

    def _verifier(self, hostname: str, now: datetime.datetime):
        # Built per verification: a verifier holds the time it was built at.
        return PolicyBuilder().store(self._store).time(now).build_server_verifier(x509.DNSName(hostname))

    def verify(self, chain_pems: list[str | bytes]) -> Caller:
        """Verify a chain (leaf first, as PEM); return the caller or raise IdentityError.

        Quay presents the same chain on every call, so results are cached per chain:
        a success until the first certificate of the chain expires (an hour at most),
        a refusal for a minute (a flood of one forged chain costs one verification a
        minute, and a chain refused as not yet valid is looked at again soon).
        """
        if not chain_pems:
            raise IdentityError("no client certificate was presented")
        key = hashlib.sha256(b"\0".join(_as_bytes(p) for p in chain_pems)).digest()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] > now:
                self._cache.move_to_end(key)
                result = cached[0]
            else:
                result = None
        if result is None:
            try:
                result, lifetime = self._verify(chain_pems), None
            except IdentityError as exc:
                result, lifetime = (str(exc), exc.names_quay, exc.names), REFUSAL_CACHE_SECONDS
            if lifetime is None:
                lifetime = min(SUCCESS_CACHE_SECONDS, result.valid_until - time.time())
            with self._lock:
                self._cache[key] = (result, now + lifetime)
                self._cache.move_to_end(key)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        if isinstance(result, tuple):
            raise IdentityError(*result)
        return result

    def _verify(self, chain_pems: list[str | bytes]) -> Caller:
        try:
            chain = [load_certificates(_as_bytes(p), "client certificate")[0] for p in chain_pems]
        except (ValueError, IndexError):
            raise IdentityError("the client certificate could not be parsed") from None
        leaf, intermediates = chain[0], chain[1:] + self._extra_intermediates
        now = datetime.datetime.now(datetime.UTC)
        reasons = []
        for hostname in self.hostnames:
            try:
                self._verifier(hostname, now).verify(leaf, intermediates)
            except VerificationError as exc:
                reasons.append(str(exc))
                continue
            except Exception as exc:  # whatever else the verification raises is a refusal, never a 500
                reasons.append(f"it could not be verified ({type(exc).__name__}: {exc})")
                continue
            expiry = min(cert.not_valid_after_utc for cert in chain).timestamp()
            return Caller(hostname=hostname, valid_until=expiry)
        return self._refuse(leaf, now, reasons)

    def _refuse(self, leaf: x509.Certificate, now: datetime.datetime, reasons: list[str]):
        expected = ", ".join(self.hostnames)
        if leaf.not_valid_after_utc < now:
            why = f"it expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M UTC}"
        elif leaf.not_valid_before_utc > now:
            why = f"it is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M UTC}"
        elif leaf.issuer == leaf.subject:
            why = "it is self-signed, not issued by a trusted CA"
        else:
            why = "; ".join(dict.fromkeys(_explain(r) for r in reasons))
        # Whoever made the certificate chose its names: escaped, they cannot forge a log line.
        raise IdentityError(printable(f"client certificate {describe(leaf)} is not a valid certificate for "
                                      f"{expected}: {why}"), names_quay=_names_one_of(leaf, self.hostnames),
                            names=printable(describe(leaf)))


def _names_one_of(leaf: x509.Certificate, hostnames: tuple[str, ...]) -> bool:
    """Whether the certificate's DNS names hold one of `hostnames`, as itself or under a wildcard."""
    wanted = {name.lower() for name in hostnames} | {"*." + name.split(".", 1)[1].lower()
                                                     for name in hostnames if "." in name}
    return any(name.lower() in wanted for name in dns_names(leaf))


def chain_from_header(value: str) -> list[bytes]:
    """The chain a TLS-terminating proxy forwarded in a header, as PEM certificates, leaf first.

    Accepts URL-encoded PEM (nginx's $ssl_client_escaped_cert) and base64 DER,
    comma-separated for a chain (HAProxy's ssl_c_der,base64; Traefik).
    """
    text = unquote(value)
    if "-----BEGIN CERTIFICATE-----" in text:
        return _PEM_BLOCK.findall(text.encode("ascii", "replace"))
    chain = []
    for part in text.split(","):
        try:
            der = base64.b64decode("".join(part.split()), validate=True)
            chain.append(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
        except (binascii.Error, ValueError):
            raise IdentityError("the client certificate header holds neither PEM nor base64 DER certificates") from None
    return chain


_EXPLANATIONS = {
    "candidates exhausted": "it does not chain to a trusted root through the certificates presented",
    "no matching subjectAltName": "none of its names matches",
    "required EKU not found": "its extended key usage does not allow serverAuth",
}


def _explain(reason: str) -> str:
    """Turn one of cryptography's verification messages into words for an operator."""
    for marker, explanation in _EXPLANATIONS.items():
        if marker in reason:
            return explanation
    return reason.split(" (encountered processing")[0]


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem
