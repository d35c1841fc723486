"""When to order (pure functions): a first certificate at once; a renewal in the window the CA's ARI gives, else
once a third of the lifetime is left (so 6-day certificates work too); a failed order again after a backoff."""

from __future__ import annotations

import datetime
import random

from cryptography import x509

FIRST_BACKOFF = 120.0  # seconds before the first retry; doubled at each failure in a row
MAX_BACKOFF = 6 * 3600.0


def renew_at(leaf: x509.Certificate, ari: datetime.datetime | None, rng: random.Random = random) -> float:
    """When to renew `leaf` (epoch seconds): ARI's time where the CA has one, else once a third of its lifetime
    is left, less up to a thirtieth of it at random, so that certificates issued together do not renew together."""
    if ari is not None:
        return ari.timestamp()
    start, end = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
    lifetime = end - start
    return end - lifetime / 3 - rng.uniform(0, lifetime / 30)


def backoff(failures: int, rng: random.Random = random) -> float:
    """Seconds to wait after `failures` failed orders in a row: 2 minutes doubling up to 6 hours, plus up to a
    quarter more at random (Let's Encrypt allows 5 failed validations per name an hour)."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failures - 1)) * rng.uniform(1.0, 1.25)


def order_due(certificate, domains: tuple[str, ...], renewal_requested: float | None, now: float) -> str | None:
    """Why a certificate must be ordered now, or None; `certificate` is the stored one (state.StoredCertificate)."""
    if certificate is None:
        return "there is no certificate yet"
    if set(certificate.domains) != set(domains):
        return f"ACME_DOMAINS changed (the certificate is for {', '.join(certificate.domains)})"
    if renewal_requested is not None and renewal_requested > certificate.issued_at:
        return "a renewal was asked for (flask --app app certificate renew)"
    if now >= certificate.renew_at:
        return "it is inside its renewal window"
    return None
