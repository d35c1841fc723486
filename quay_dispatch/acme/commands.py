"""`flask --app app certificate [renew]`: what certificate is served and when it renews; a renewal now."""

from __future__ import annotations

import dataclasses
import time

from cryptography import x509

from . import schedule, state
from .protocol import CA, Session, failure_text, new_key_pem
from .state import Storage

RENEW_WAIT = 60.0  # seconds `certificate renew` waits for the new certificate


def describe(storage: Storage, domains: tuple[str, ...], directory: str) -> list[str]:
    """The certificate ACME got for `domains`, as every worker serves it: lines for the terminal."""
    stored = state.load_certificate(storage)
    failures = state.load_failures(storage)
    lines = [f"  source:     ACME, {directory}, for {', '.join(domains)}"]
    if stored is None:
        lines.append("  served:     a temporary self-signed certificate: none issued yet")
    else:
        lines += certificate_lines(stored.leaf)
        due = schedule.order_due(stored, domains, state.renewal_requested(storage), time.time())
        lines.append(f"  renewal:    {'due now: ' + due if due else state.utc(stored.renew_at)}")
    if failures.count:
        lines.append(f"  last error: {failures.last_error} ({failures.count} failed orders in a row; next try at "
                     f"{state.utc(failures.next_try)})")
    else:
        lines.append("  last error: none")
    return lines


def certificate_lines(leaf: x509.Certificate) -> list[str]:
    """The names, issuer, serial and expiry of a served certificate, for the terminal."""
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = ", ".join(str(name.value) for name in names)
    except x509.ExtensionNotFound:
        named = leaf.subject.rfc4514_string()
    left = (leaf.not_valid_after_utc.timestamp() - time.time()) / 86400
    return [f"  names:      {named}", f"  issuer:     {leaf.issuer.rfc4514_string()}",
            f"  serial:     {format(leaf.serial_number, 'x')}",
            f"  expires:    {state.utc(leaf.not_valid_after_utc.timestamp())} ({left:.1f} days from now)"]


def check_online(storage: Storage, ca: CA) -> list[tuple[bool, str]]:
    """check-config --online: the CA's directory fetched, the account (if one is stored) asked about."""
    account = state.load_account(storage, ca.directory)
    key_pem, url = account if account else (new_key_pem(), None)
    try:
        return Session(ca, key_pem, url).check()
    except Exception as exc:  # whatever the CA or the network says
        return [(False, f"{ca.directory}: {failure_text(exc)}")]


def renew(storage: Storage, wait: float = RENEW_WAIT) -> tuple[bool, str]:
    """Ask the running service for a new certificate now (the backoff waived), and wait for it: whether it came,
    and what to say."""
    asked = time.time()
    before = state.load_certificate(storage)
    state.request_renewal(storage, asked)
    failures = state.load_failures(storage)
    if failures.count:
        state.store_failures(storage, dataclasses.replace(failures, next_try=asked))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(1.0)
        stored = state.load_certificate(storage)
        if stored is not None and stored.issued_at > asked:
            return True, f"renewed: {stored.describe()} (was {before.serial if before else 'none'})"
        failures = state.load_failures(storage)
        if failures.count and failures.last_error and failures.next_try > asked + 1:
            return False, f"the order failed: {failures.last_error}"
    return False, (f"no new certificate within {wait:.0f} s: is the service running? It orders within seconds of "
                   "being asked, and the request stays until it has")
