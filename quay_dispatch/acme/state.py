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
from typing import Protocol

from cryptography import x509

ORDER_LEASE = "acme:order"  # whoever holds it orders; everyone else waits for the certificate in the store
_CERTIFICATE, _FAILURES, _RENEW = "acme:certificate", "acme:failures", "acme:renew-requested"
CHALLENGE_PREFIX = "acme:challenge:"


class Storage(Protocol):
    """What ACME needs of the store every worker and replica shares: named values, and leases one holder at a
    time may take (certmagic's Storage and Locker). The storage provides it (outbox/shared.py)."""

    def load(self, name: str) -> str | None: ...

    def load_prefixed(self, prefix: str) -> dict[str, str]: ...

    def store(self, name: str, value: str | None) -> None: ...

    def lock(self, name: str, holder: str, seconds: float) -> bool: ...

    def unlock(self, name: str, holder: str) -> None: ...

    def changes(self) -> Changes: ...


class Changes(Protocol):
    """Whether the store may have changed since the last call, without a transaction (outbox/waking.py)."""

    def seen(self) -> bool: ...


@dataclass(frozen=True)
class StoredCertificate:
    """The certificate being served, as issued."""

    chain_pem: str
    key_pem: str
    domains: tuple[str, ...]
    issued_at: float  # epoch seconds, when it was stored
    renew_at: float
    serve_from: float = 0.0  # epoch seconds: every worker of every replica switches to it then, not before

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


def load_account(storage: Storage, directory: str) -> tuple[str, str | None] | None:
    """The account key (PEM) and URL for `directory`, or None."""
    value = storage.load(f"acme:account:{directory}")
    if value is None:
        return None
    account = json.loads(value)
    return account["key"], account.get("url")


def store_account(storage: Storage, directory: str, key_pem: str, url: str | None) -> None:
    storage.store(f"acme:account:{directory}", json.dumps({"key": key_pem, "url": url}))


def load_certificate(storage: Storage) -> StoredCertificate | None:
    value = storage.load(_CERTIFICATE)
    if value is None:
        return None
    fields = json.loads(value)
    return StoredCertificate(fields["chain_pem"], fields["key_pem"], tuple(fields["domains"]), fields["issued_at"],
                             fields["renew_at"], fields.get("serve_from", 0.0))


def store_certificate(storage: Storage, certificate: StoredCertificate) -> None:
    storage.store(_CERTIFICATE, json.dumps(asdict(certificate)))


def load_failures(storage: Storage) -> Failures:
    value = storage.load(_FAILURES)
    return Failures(**json.loads(value)) if value else Failures()


def store_failures(storage: Storage, failures: Failures) -> None:
    storage.store(_FAILURES, json.dumps(asdict(failures)) if failures.count else None)


def renewal_requested(storage: Storage) -> float | None:
    """When `certificate renew` asked for a new certificate (epoch seconds), if it did."""
    value = storage.load(_RENEW)
    return float(value) if value else None


def request_renewal(storage: Storage, at: float | None) -> None:
    storage.store(_RENEW, None if at is None else repr(at))


def load_challenges(storage: Storage) -> dict[str, str]:
    """The pending challenges: name -> key authorization."""
    return {name[len(CHALLENGE_PREFIX):]: value for name, value in storage.load_prefixed(CHALLENGE_PREFIX).items()}


def store_challenges(storage: Storage, challenges: dict[str, str]) -> None:
    """Publish exactly `challenges` (name -> key authorization): the others are taken down."""
    for name in load_challenges(storage).keys() - challenges.keys():
        storage.store(CHALLENGE_PREFIX + name, None)
    for name, key_authorization in challenges.items():
        storage.store(CHALLENGE_PREFIX + name, key_authorization)


def utc(epoch: float) -> str:
    return f"{datetime.datetime.fromtimestamp(epoch, datetime.UTC):%Y-%m-%d %H:%M} UTC"
