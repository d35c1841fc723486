"""Which context a new connection gets, chosen from its ClientHello before OpenSSL sees a byte (the challenge router).

A validator's `acme-tls/1` connection for a configured name with a pending challenge gets the
challenge's context, which asks for no client certificate; every other connection gets the
serving context. An `acme-tls/1` connection nobody expects is refused: no certificate is shown
for a name the operator did not configure, nor for one without a pending authorization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from OpenSSL import SSL

from ..transport.tls_context import HandshakeRefused
from .challenge import challenge_context
from .hello import read_hello


class ChallengeRouter:
    """The context chooser of a worker's TLS connections (tls_stream.ChooseContext) when ACME is on."""

    def __init__(self, domains: Iterable[str], serving: Callable[[], SSL.Context]):
        self._domains = frozenset(domains)
        self._serving = serving  # the context that serves the current certificate, swapped on renewal
        self._challenges: dict[str, tuple[str, SSL.Context]] = {}  # name -> (key authorization, its context)

    def expect(self, key_authorizations: dict[str, str]) -> None:
        """The pending challenges (name -> key authorization), as the store holds them; a context is made once
        for each new one. Names outside ACME_DOMAINS are ignored."""
        challenges = {}
        for name, key_authorization in key_authorizations.items():
            if name not in self._domains:
                continue
            known = self._challenges.get(name)
            if known and known[0] == key_authorization:
                challenges[name] = known
            else:
                challenges[name] = (key_authorization, challenge_context(name, key_authorization))
        self._challenges = challenges  # one assignment: the loop reads it without a lock

    def __call__(self, data: bytes) -> tuple[SSL.Context, str | None] | None:
        hello = read_hello(data)
        if hello is None:
            return None
        if not hello.wants_challenge:
            return self._serving(), None
        name = hello.server_name
        if name not in self._domains:
            raise HandshakeRefused(f"an acme-tls/1 connection for {name!r}, which is not one of ACME_DOMAINS")
        pending = self._challenges.get(name)
        if pending is None:
            raise HandshakeRefused(f"an acme-tls/1 connection for {name}, which has no pending challenge")
        return pending[1], name
