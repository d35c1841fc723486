"""A worker's certificate from ACME: the context chooser its TLS connections use, kept up to date by a thread.

Every worker of every replica runs one. Twice a second it asks whether the store changed (outbox.changes: SQLite's
WAL index, PostgreSQL's NOTIFY; no transaction), and only then reads the pending challenges (any replica may be the
one the validator reaches) and the stored certificate; it reads the certificate, and whether an order is due, at
least once a minute besides. A new certificate is stored with the time every worker switches to it, SWITCH_DELAY
later, so that no worker serves the old one (the first start's self-signed one) once any serves the new: new
connections get it from then on, open ones keep theirs. When an order is due and the shared backoff allows, it
asks for the order lease; the one that gets it looks again (another may just have stored a certificate), orders,
stores the result or the failure, and gives the lease back.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ..base import metrics
from ..transport.tls_context import context_from_pem
from . import schedule, state
from .challenge import self_signed
from .protocol import CA, Session, failure_text, new_key_pem, private_pem
from .router import ChallengeRouter
from .state import Storage

CHANGE_CHECK = 0.5  # seconds between looks at whether the store changed
LOOK_INTERVAL = 60.0  # seconds: the certificate and the orders due are read at least this often (a window that opens)
PUBLISHED_WAIT = 4 * CHANGE_CHECK  # what every worker needs to read a published value: a challenge, a certificate
SWITCH_DELAY = PUBLISHED_WAIT  # from storing a certificate to every worker serving it
LEASE_RETRY = 2.0  # seconds between tries for the order lease while another holds it and an order is due
ORDER_LEASE_SECONDS = 300.0
log = logging.getLogger("quay_dispatch.acme")


class CertificateManager:
    """The certificates of one worker: a temporary self-signed one until the CA's is in the store, then that."""

    def __init__(self, domains: tuple[str, ...], ca: CA, storage: Storage):
        self.domains, self.ca, self.storage = domains, ca, storage
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.served: state.StoredCertificate | None = None
        self.waiting = "the first look at the store has not been made yet"  # None once the CA's certificate is served
        self._make_context: Callable[[bytes, bytes], SSL.Context] | None = None
        self._context: SSL.Context | None = None
        self._upcoming: tuple[float, SSL.Context, state.StoredCertificate] | None = None  # (serve from, ...)
        self.router = ChallengeRouter(domains, self._context_now)

    def start(self, cert_reqs: int, ciphers: str | None) -> None:
        """Serve what the store holds (a restart serves the stored certificate from its first connection), else a
        temporary one; then keep looking, in a thread."""
        self._make_context = lambda chain, key: context_from_pem(chain, key, cert_reqs, ciphers)
        self._serve(*_temporary_pair(self.domains[0]))
        try:
            self._take_stored()
        except Exception as exc:  # the store is down: the thread looks again
            log.warning("ACME: the stored certificate cannot be read yet: %s", exc)
        threading.Thread(target=self._run, name="acme", daemon=True).start()
        log.info("ACME: TLS for %s, the certificate from %s (worker %d)", ", ".join(self.domains), self.ca.directory,
                 os.getpid())

    def current(self) -> ChallengeRouter:
        """What new connections are handshaken with (tls_stream.ChooseContext), as ReloadingContext.current()."""
        return self.router

    def _context_now(self) -> SSL.Context | None:
        """The serving context for a connection now, on the loop: a stored certificate's from its serve_from on, in
        every worker alike (a comparison; the thread promotes it soon after)."""
        upcoming = self._upcoming
        return upcoming[1] if upcoming is not None and time.time() >= upcoming[0] else self._context

    def _run(self) -> None:
        changes = self.storage.changes()
        look_at, again, trouble = 0.0, False, None
        while True:
            try:
                self._promote_when_due()
                changed = changes.seen() or again
                if changed:
                    self.router.expect(state.load_challenges(self.storage))
                if changed or time.time() >= look_at:
                    self._take_stored()
                    look_at = min(time.time() + LOOK_INTERVAL, self._order_if_due() or math.inf)
                again, trouble = False, None
            except Exception as exc:  # the store, mostly: said once, and read again at the next look
                again = True
                if failure_text(exc) != trouble:
                    trouble = failure_text(exc)
                    log.warning("ACME: cannot look at the store: %s", trouble)
            time.sleep(CHANGE_CHECK)

    def _take_stored(self) -> None:
        """Serve the stored certificate if it is new and for ACME_DOMAINS: now, or from its serve_from on."""
        stored = state.load_certificate(self.storage)
        if stored is None or stored == self._newest or set(stored.domains) != set(self.domains):
            if self._newest is None:
                failures = state.load_failures(self.storage)
                self.waiting = f"waiting for a certificate from ACME: {failures.last_error or 'ordering'}"
            return
        context = self._make_context(stored.chain_pem.encode("ascii"), stored.key_pem.encode("ascii"))
        self._upcoming = (stored.serve_from, context, stored)
        self._promote_when_due()

    @property
    def _newest(self) -> state.StoredCertificate | None:
        """The certificate served, or the one every worker switches to soon."""
        return self._upcoming[2] if self._upcoming is not None else self.served

    def _promote_when_due(self) -> None:
        upcoming = self._upcoming
        if upcoming is None or time.time() < upcoming[0]:
            return
        self._context = upcoming[1]  # before clearing it: the loop sees one or the other, never neither
        self._upcoming = None
        metrics.certificate_served("acme", upcoming[2].leaf)
        self.served, self.waiting = upcoming[2], None
        log.info("ACME: serving the certificate %s (worker %d)", upcoming[2].describe(), os.getpid())

    def _serve(self, chain_pem: bytes, key_pem: bytes) -> None:
        self._context = self._make_context(chain_pem, key_pem)  # one assignment: the loop takes it as it is
        metrics.certificate_served("acme", x509.load_pem_x509_certificate(chain_pem))

    def _order_if_due(self) -> float | None:
        """Order if one is due and this worker gets the lease. When one is due but must wait (the shared backoff,
        another's lease), when to look again (epoch seconds): the store does not change when a wait ends."""
        reason = schedule.order_due(self._newest, self.domains, state.renewal_requested(self.storage), time.time())
        if reason is None:
            return None
        next_try = state.load_failures(self.storage).next_try
        if time.time() < next_try:
            return next_try
        if not self.storage.lock(state.ORDER_LEASE, self.holder, ORDER_LEASE_SECONDS):
            return time.time() + LEASE_RETRY  # its certificate comes through the store, else its lease ends
        try:
            self._take_stored()  # a second look, with the lease: another may have just stored one
            reason = schedule.order_due(self._newest, self.domains, state.renewal_requested(self.storage), time.time())
            if reason and time.time() >= state.load_failures(self.storage).next_try:
                self._order(reason)
        finally:
            self.storage.unlock(state.ORDER_LEASE, self.holder)
        return None

    def _order(self, reason: str) -> None:
        log.info("ACME: ordering a certificate for %s from %s: %s", ", ".join(self.domains), self.ca.directory,
                 reason)
        try:
            session = self._session()
            issued = session.order(self.domains, self._publish)
            leaf = x509.load_pem_x509_certificate(issued.chain_pem.encode("ascii"))
            certificate = state.StoredCertificate(issued.chain_pem, issued.key_pem, self.domains, time.time(),
                                                  schedule.renew_at(leaf, _ari(session, issued.chain_pem)),
                                                  serve_from=time.time() + SWITCH_DELAY)
        except Exception as exc:
            failures = state.load_failures(self.storage)
            count = failures.count + 1
            retry = time.time() + schedule.backoff(count)
            state.store_failures(self.storage, state.Failures(count, failure_text(exc), retry))
            metrics.ACME_ORDERS.labels("failed").inc()
            log.warning("ACME: the order failed (%d in a row), next try at %s: %s", count, state.utc(retry),
                        failure_text(exc))
            return
        state.store_certificate(self.storage, certificate)
        state.store_failures(self.storage, state.Failures())
        state.request_renewal(self.storage, None)
        metrics.ACME_ORDERS.labels("issued").inc()
        log.info("ACME: certificate issued, %s; renewal at %s", certificate.describe(),
                 state.utc(certificate.renew_at))
        self._take_stored()

    def _session(self) -> Session:
        account = state.load_account(self.storage, self.ca.directory)
        key_pem, url = account if account else (new_key_pem(), None)
        if account is None:  # stored before it is registered: a crash in between cannot make two accounts
            state.store_account(self.storage, self.ca.directory, key_pem, None)
        session = Session(self.ca, key_pem, url)
        registered = session.account()
        if registered != url:
            state.store_account(self.storage, self.ca.directory, key_pem, registered)
            log.info("ACME: account %s at %s", registered, self.ca.directory)
        return session

    def _publish(self, challenges: dict[str, str]) -> None:
        """The challenges to every worker and replica (through the store) and to this one, before validation."""
        state.store_challenges(self.storage, challenges)
        self.router.expect(challenges)
        if challenges:
            log.info("ACME: answering the tls-alpn-01 challenge for %s", ", ".join(sorted(challenges)))
            time.sleep(PUBLISHED_WAIT)


def _ari(session: Session, chain_pem: str) -> datetime.datetime | None:
    try:
        return session.renewal_window(chain_pem)
    except Exception as exc:  # ARI is advice: without it, a third of the lifetime
        log.info("ACME: no renewal information from the CA: %s", failure_text(exc))
        return None


def _temporary_pair(domain: str) -> tuple[bytes, bytes]:
    """A self-signed certificate and key for the first start, until the CA's certificate is in."""
    certificate, key = self_signed(domain, datetime.timedelta(days=1))
    return certificate.public_bytes(serialization.Encoding.PEM), private_pem(key).encode("ascii")
