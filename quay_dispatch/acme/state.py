"""ACME's state in the store every worker and replica shares (outbox/shared.py): what is kept, under which name.

- the account of each directory: its key and URL;
- the certificate: chain, key, the names it is for, when to renew it;
- the pending challenges: one value per name, its key authorization;
- the failures: how many in a row, the last error, when to try again (one backoff for all);
- a renewal asked for by `flask --app app certificate renew`.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass

from cryptography import x509

from ..outbox import Outbox

ORDER_LEASE = "acme:order"  # whoever holds it orders; everyone else waits for the certificate in the store
_CERTIFICATE, _FAILURES, _RENEW = "acme:certificate", "acme:failures", "acme:renew-requested"
CHALLENGE_PREFIX = "acme:challenge:"


@dataclass(frozen=True)
class StoredCertificate:
    """The certificate being served, as issued."""

    chain_pem: str
    key_pem: str
    domains: tuple[str, ...]
    issued_at: float  # epoch seconds, when it was stored
    renew_at: float

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem.encode("ascii"))

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    def describe(self) -> str:
        leaf = self.leaf
        return (f"serial {self.serial} for {', '.join(self.domains)}, issued by {leaf.issuer.rfc4514_string()}, "
                f"expires {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


@dataclass(frozen=True)
class Failures:
    """Orders that failed in a row, across every worker and replica: the shared backoff."""

    count: int = 0
    last_error: str | None = None
    next_try: float = 0.0  # epoch seconds


def load_account(outbox: Outbox, directory: str) -> tuple[str, str | None] | None:
    """The account key (PEM) and URL for `directory`, or None."""
    value = outbox.load(f"acme:account:{directory}")
    if value is None:
        return None
    account = json.loads(value)
    return account["key"], account.get("url")


def store_account(outbox: Outbox, directory: str, key_pem: str, url: str | None) -> None:
    outbox.store(f"acme:account:{directory}", json.dumps({"key": key_pem, "url": url}))


def load_certificate(outbox: Outbox) -> StoredCertificate | None:
    value = outbox.load(_CERTIFICATE)
    if value is None:
        return None
    fields = json.loads(value)
    return StoredCertificate(fields["chain_pem"], fields["key_pem"], tuple(fields["domains"]), fields["issued_at"],
                             fields["renew_at"])


def store_certificate(outbox: Outbox, certificate: StoredCertificate) -> None:
    outbox.store(_CERTIFICATE, json.dumps(asdict(certificate)))


def load_failures(outbox: Outbox) -> Failures:
    value = outbox.load(_FAILURES)
    return Failures(**json.loads(value)) if value else Failures()


def store_failures(outbox: Outbox, failures: Failures) -> None:
    outbox.store(_FAILURES, json.dumps(asdict(failures)) if failures.count else None)


def renewal_requested(outbox: Outbox) -> float | None:
    """When `certificate renew` asked for a new certificate (epoch seconds), if it did."""
    value = outbox.load(_RENEW)
    return float(value) if value else None


def request_renewal(outbox: Outbox, at: float | None) -> None:
    outbox.store(_RENEW, None if at is None else repr(at))


def load_challenges(outbox: Outbox) -> dict[str, str]:
    """The pending challenges: name -> key authorization."""
    return {name[len(CHALLENGE_PREFIX):]: value for name, value in outbox.load_prefixed(CHALLENGE_PREFIX).items()}


def store_challenges(outbox: Outbox, challenges: dict[str, str]) -> None:
    """Publish exactly `challenges` (name -> key authorization): the others are taken down."""
    for name in load_challenges(outbox).keys() - challenges.keys():
        outbox.store(CHALLENGE_PREFIX + name, None)
    for name, key_authorization in challenges.items():
        outbox.store(CHALLENGE_PREFIX + name, key_authorization)


def utc(epoch: float) -> str:
    return f"{datetime.datetime.fromtimestamp(epoch, datetime.UTC):%Y-%m-%d %H:%M} UTC"
