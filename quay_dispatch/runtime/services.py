"""The long-lived objects one application instance works with, built once from Settings.

They are built on first use, so that the CLI commands that need no
configuration (dev-certs, send-sample) work before the service is configured.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from ..config import Settings, environment_settings, listing, quay_certificates
from ..delivery.deliverer import Deliverer
from ..delivery.github import GitHubClient, TokenAuth, Transport
from ..delivery.github_app import AppAuth
from ..outbox import Outbox, StoreUnavailable, open_outbox
from ..outbox.refusals import RefusalLog
from ..transport.identity import QuayVerifier
from . import logs
from .preflight import service_problems

if TYPE_CHECKING:
    from ..acme.manager import CertificateManager
    from ..quay_side.watch import Watch

_EXTENSION = "quay_dispatch"
log = logging.getLogger("quay_dispatch.outbox")
_lock = threading.Lock()


@dataclass
class Services:
    """Settings plus what is built from them: the Quay verifier, the outbox, the GitHub client, the deliverer."""

    settings: Settings
    verifier: QuayVerifier | None
    outbox: Outbox
    github: GitHubClient
    deliverer: Deliverer
    certificates: CertificateManager | None = None  # ACME's, when ACME_DOMAINS is set; the TLS worker starts it
    refusals: RefusalLog | None = None  # refused calls for the operator's page, when it is on (ADMIN_BIND)
    quay_watch: Watch | None = None  # Quay's side, when QUAY_API_TOKEN is set

    def not_ready(self) -> list[tuple[str, str]]:
        """Why the service cannot accept events now, each as (what /readyz says, what the log says); empty: ready."""
        problems = []
        try:
            self.outbox.check_writable()
        except StoreUnavailable as exc:
            problems.append(("the outbox cannot commit a write right now",
                             f"the outbox ({self.outbox.description}) cannot commit: {exc}"))
        if not self.deliverer.alive:
            problems.append(("the deliverer is not running",) * 2)
        if self.certificates is not None and self.certificates.waiting:
            problems.append((self.certificates.waiting,) * 2)
        return problems

    def start_certificates(self, cert_reqs: int, ciphers: str | None) -> CertificateManager | None:
        """With ACME_DOMAINS, start the certificate manager (gunicorn's cert_reqs and ciphers for the serving context)
        and return it: the TLS worker's source of contexts. Called once per serving process, by the worker."""
        if self.certificates is not None:
            self.certificates.start(cert_reqs, ciphers)
        return self.certificates

    def start_delivery(self) -> None:
        """Bring the schema up to date if it can, and start sending (and keeping refused calls for the page);
        called once per serving process.

        gunicorn's master brought the schema up to date before any worker started. A worker that
        starts later (one replaced, a reload) while the store cannot answer serves all the same:
        failing its boot would make gunicorn's master stop the whole service.
        """
        try:
            self.outbox.migrate()
        except StoreUnavailable as exc:
            log.warning("the outbox (%s) cannot be reached as this worker starts (%s): serving on, the "
                        "schema was brought up to date when the service started", self.outbox.description, exc)
        self.deliverer.start()
        if self.refusals is not None:
            self.refusals.start()
        if self.quay_watch is not None:
            self.quay_watch.start()


def build(settings: Settings) -> Services:
    """Build the Services for `settings` (loads the trusted roots, opens nothing yet).

    Raises config.ConfigError naming the setting when a file it names cannot be used.
    """
    logs.configure(settings)
    if problems := service_problems(settings):
        raise listing(problems)
    verifier = None
    if settings.client_cert_source in ("tls", "header"):
        roots, intermediates = quay_certificates(settings.quay_ca_file, settings.quay_intermediates_file)
        verifier = QuayVerifier(settings.quay_hostnames, roots, intermediates)
    outbox = open_outbox(settings.database_url, settings.store_timeout)
    # In dry-run mode there may be no credentials and nothing is pending; the deliverer only prunes.
    transport = Transport(settings.github_api_url, settings.github_timeout, settings.github_ca_file)
    if settings.github_app_id and settings.github_app_private_key:
        auth = AppAuth(transport, settings.github_app_id, settings.github_app_private_key,
                       settings.github_app_installation_id)
    else:
        auth = TokenAuth(transport, settings.github_token or "")
    client = GitHubClient(transport, auth)
    deliverer = Deliverer(outbox, client, settings.delivery_max_age, settings.delivery_retention)
    refusals = RefusalLog(outbox) if settings.admin_bind else None
    services = Services(settings, verifier, outbox, client, deliverer, _certificates(settings, outbox), refusals)
    if settings.quay_api_token:
        from ..quay_side.watch import Watch

        services.quay_watch = Watch(settings, outbox, lambda: "; ".join(p for p, _ in services.not_ready()) or None,
                                    deliverer.host)
    return services


def _certificates(settings: Settings, outbox: Outbox) -> CertificateManager | None:
    """ACME's certificate manager, loaded only when ACME_DOMAINS is set (with certbot's acme library)."""
    if not settings.acme_domains:
        return None
    from ..acme.manager import CertificateManager
    from ..acme.protocol import CA

    ca = CA(settings.acme_directory, settings.acme_ca_file, settings.acme_email, settings.acme_profile,
            settings.acme_eab_kid, settings.acme_eab_hmac_key)
    return CertificateManager(settings.acme_domains, ca, outbox)


def init_app(app: Flask, settings: Settings | Services | None) -> None:
    """Remember `settings` (None: read the environment when first needed), or the Services to share."""
    app.extensions[_EXTENSION] = settings


def services_of(app: Flask | None = None) -> Services:
    """The Services of `app` (default: the current application), built on first use.

    Raises config.ConfigError when the environment is not a usable configuration.
    """
    app = app or current_app._get_current_object()
    value = app.extensions[_EXTENSION]
    if isinstance(value, Services):  # every request after the first: no lock on the hot path
        return value
    with _lock:
        value = app.extensions[_EXTENSION]
        if not isinstance(value, Services):
            value = app.extensions[_EXTENSION] = build(value or environment_settings())
    return value
