"""The ACME protocol (RFC 8555) by certbot's `acme` library: the account, one order for ACME_DOMAINS answered by
tls-alpn-01, the certificate and its chain; and ARI's renewal window (RFC 9773) where the CA has one.

acme 5 dropped its tls-alpn-01 classes: the challenge type is registered here, its certificate is challenge.py's.
The library retries a rejected nonce once; PatientNetwork retries it more, so that an order survives a CA that
rejects many (each retry is safe: a request refused for its nonce was not processed).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

USER_AGENT = "quay-github-actions-dispatch"
NETWORK_TIMEOUT = 10  # seconds per request to the CA
ORDER_DEADLINE = 90  # seconds for the CA to validate and issue, once the challenges are answered
NONCE_RETRIES = 20  # tries of a request whose nonce the CA rejects (10 lost 1 order in ~100 to a CA rejecting half)
log = logging.getLogger("quay_dispatch.acme")


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The answer to a tls-alpn-01 challenge: an empty object, the proof is on the TLS port."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737's challenge."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> str:
        return self.key_authorization(account_key)


class PatientNetwork(client.ClientNetwork):
    """The library's network, retrying a request the CA refused for its nonce up to NONCE_RETRIES times."""

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(NONCE_RETRIES - 1):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
                log.debug("ACME: the CA rejected a request's nonce; sending it again with a new one")
        return self._post_once(*args, **kwargs)


class IssueError(Exception):
    """An order failed; the message says where and why, as the CA put it."""


@dataclass(frozen=True)
class CA:
    """Where and how to order: ACME_DIRECTORY, ACME_CA_FILE, ACME_EMAIL, ACME_PROFILE, ACME_EAB_*."""

    directory: str
    ca_file: str | None = None
    email: str | None = None
    profile: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None

    def __repr__(self) -> str:
        return f"CA(directory={self.directory!r})"  # never the EAB key


@dataclass(frozen=True)
class Issued:
    """A certificate from the CA: its chain (leaf first) and its key, PEM."""

    chain_pem: str
    key_pem: str


class Session:
    """One conversation with the CA, as one account (its key, PEM; its URL, once known)."""

    def __init__(self, ca: CA, account_key_pem: str, account_url: str | None):
        self.ca = ca
        key = serialization.load_pem_private_key(account_key_pem.encode("ascii"), password=None)
        self.account_key = jose.JWKEC(key=key)
        self.net = PatientNetwork(self.account_key, alg=jose.ES256, verify_ssl=ca.ca_file or True,
                                  user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)
        if account_url:
            self.net.account = messages.RegistrationResource(uri=account_url, body=messages.Registration())
        self.client = client.ClientV2(client.ClientV2.get_directory(ca.directory, self.net), self.net)

    def account(self) -> str:
        """The account's URL: registered now unless it was known (terms of service agreed for the operator)."""
        if self.net.account is not None:
            return self.net.account.uri
        eab = None
        if self.ca.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.account_key.public_key(), kid=self.ca.eab_kid,
                hmac_key=self.ca.eab_hmac_key, directory=self.client.directory)
        registration = messages.NewRegistration.from_data(email=self.ca.email, terms_of_service_agreed=True,
                                                          external_account_binding=eab)
        try:
            return self.client.new_account(registration).uri
        except errors.ConflictError as existing:  # this key has an account already: use it
            self.net.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
            return existing.location

    def order(self, domains: tuple[str, ...], expect: Callable[[dict[str, str]], None]) -> Issued:
        """A certificate for `domains`, answering each pending authorization's tls-alpn-01 challenge.

        `expect(name -> key authorization)` publishes the challenges to every worker and replica
        before the CA is asked to validate (and expect({}) once it is done).
        """
        key_pem = new_key_pem()
        order = self.client.new_order(crypto_util.make_csr(key_pem.encode("ascii"), list(domains)),
                                      profile=self.ca.profile)
        pending = [(authz.body.identifier.value, _tls_alpn_challenge(authz))
                   for authz in order.authorizations if authz.body.status != messages.STATUS_VALID]
        expect({name: challenge.chall.key_authorization(self.account_key) for name, challenge in pending})
        try:
            for _, challenge in pending:
                self.client.answer_challenge(challenge, challenge.chall.response(self.account_key))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            done = self.client.poll_and_finalize(order, deadline)
        finally:
            expect({})
        return Issued(chain_pem=done.fullchain_pem, key_pem=key_pem)

    def check(self) -> list[tuple[bool, str]]:
        """What the directory says of this CA and account: (fine, what) for each thing checked; nothing ordered."""
        meta = self.client.directory.meta
        try:
            ari = bool(self.client.directory["renewalInfo"])
        except KeyError:
            ari = False
        found = [(True, f"directory answers (terms of service: {meta.terms_of_service or 'none given'}; renewal "
                        f"information: {'yes' if ari else 'no'})")]
        if meta.external_account_required and not self.ca.eab_kid:
            found.append((False, "the CA requires external account binding: set ACME_EAB_KID and ACME_EAB_HMAC_KEY"))
        if self.ca.profile and meta.profiles is not None and self.ca.profile not in meta.profiles:
            found.append((False, f"ACME_PROFILE={self.ca.profile!r} is not one of the CA's profiles: "
                                 f"{', '.join(meta.profiles)}"))
        if self.net.account is None:
            found.append((True, "no account yet: one is registered with the first order"))
        else:
            status = self.client.query_registration(self.net.account).body.status
            found.append((status == "valid", f"account {self.net.account.uri} is {status}"))
        return found

    def renewal_window(self, chain_pem: str) -> datetime.datetime | None:
        """When ARI says to renew this certificate (a time chosen in its window), or None without ARI."""
        when, _ = self.client.renewal_time(chain_pem.encode("ascii"))
        return when


def _tls_alpn_challenge(authz: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challenge in authz.body.challenges:
        if isinstance(challenge.chall, TLSALPN01):
            return challenge
    offered = ", ".join(challenge.chall.typ for challenge in authz.body.challenges)
    raise IssueError(f"the CA offers no tls-alpn-01 challenge for {authz.body.identifier.value} (only {offered})")


def new_key_pem() -> str:
    """A new P-256 key, PEM: an account's (ES256) or a certificate's."""
    return private_pem(ec.generate_private_key(ec.SECP256R1()))


def private_pem(key) -> str:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def failure_text(exc: Exception) -> str:
    """What a failure says (the CA's words, mostly), on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
