"""Who may call: Quay's host names and CAs, where its certificate comes from, the proxies and the token."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cryptography import x509

from ..transport.identity import load_roots
from .reader import Env, dns_name_problem
from .tls import certificates_in

MIN_INCOMING_TOKEN_LENGTH = 24
CLIENT_CERT_SOURCES = ("tls", "header", "none")
DEFAULT_CLIENT_CERT_HEADER = "X-SSL-Client-Cert"
NO_TRUSTED_PROXY = ("CLIENT_CERT_SOURCE=header needs FORWARDED_ALLOW_IPS (or gunicorn's --forwarded-allow-ips): "
                    "the proxy's addresses, the only ones whose client certificate header is believed")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def quay_settings(env: Env) -> dict:
    """QUAY_HOSTNAME, QUAY_CA_FILE, QUAY_INTERMEDIATES_FILE, CLIENT_CERT_*, FORWARDED_ALLOW_IPS (Settings' fields)."""
    hostnames = tuple(h.strip().lower() for h in (env.get("QUAY_HOSTNAME") or "quay.io").split(",") if h.strip())
    for hostname in hostnames:
        if reason := _hostname_problem(hostname):
            env.problems.append(f"QUAY_HOSTNAME={hostname!r}: {reason}")
    source = (env.get("CLIENT_CERT_SOURCE") or "tls").lower()
    if source not in CLIENT_CERT_SOURCES:
        env.problems.append(f"CLIENT_CERT_SOURCE={source!r}: use one of {', '.join(CLIENT_CERT_SOURCES)}")
    # That header mode names a proxy is checked where gunicorn's --forwarded-allow-ips is known too:
    # quay_dispatch/startup.py (proxy_problems).
    proxies = trusted_proxies((env.get("FORWARDED_ALLOW_IPS") or "").split(","), source, "FORWARDED_ALLOW_IPS",
                              env.problems)
    return dict(quay_hostnames=hostnames or ("quay.io",), quay_ca_file=env.get("QUAY_CA_FILE"),
                quay_intermediates_file=env.get("QUAY_INTERMEDIATES_FILE"), client_cert_source=source,
                client_cert_header=env.get("CLIENT_CERT_HEADER") or DEFAULT_CLIENT_CERT_HEADER,
                forwarded_allow_ips=proxies, incoming_token=_incoming_token(env, source))


def _incoming_token(env: Env, source: str) -> str | None:
    """INCOMING_TOKEN: long enough to be a secret, and required when no certificate can identify Quay."""
    token = env.get("INCOMING_TOKEN")
    if token is not None and len(token) < MIN_INCOMING_TOKEN_LENGTH:
        env.problems.append(
            f"INCOMING_TOKEN is too short ({len(token)} characters): use at least "
            f"{MIN_INCOMING_TOKEN_LENGTH}, for example from "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if source == "none" and token is None:
        env.problems.append(
            "CLIENT_CERT_SOURCE=none without INCOMING_TOKEN would let anyone trigger your workflows: "
            "set INCOMING_TOKEN and put it in Quay's notification URL (https://quay:TOKEN@host/incoming)"
        )
    return token


def _hostname_problem(hostname: str) -> str | None:
    """Why QUAY_HOSTNAME's `hostname` cannot be checked against Quay's certificate, or None.

    A wildcard would accept any host of the domain, and an IP address is not a name
    Quay's certificate carries; either made every genuine call fail before.
    """
    if "*" in hostname:
        return "a wildcard is not allowed: name each Quay host (the certificate may be a wildcard one)"
    return dns_name_problem(hostname, "quay.io")


def trusted_proxies(entries: Iterable[str], source: str, setting: str, problems: list[str]) -> tuple[Network, ...]:
    """The networks in `entries` (FORWARDED_ALLOW_IPS, or gunicorn's effective list, named by `setting`).

    In header mode `*` is refused: it would believe a forged certificate header from anyone.
    """
    proxies = []
    for entry in entries:
        entry = entry.strip()
        if entry == "*" and source == "header":
            problems.append(f"{setting}=* would accept a forged client certificate header from anyone: "
                            "name the proxy's addresses")
        elif entry and entry != "*":
            try:
                proxies.append(ipaddress.ip_network(entry))
            except ValueError:
                problems.append(f"{setting}: {entry!r} is not an IP address or network")
    return tuple(proxies)


def quay_certificates(ca_file: str | None, intermediates_file: str | None
                      ) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """The trusted roots (QUAY_CA_FILE, else certifi's bundle) and QUAY_INTERMEDIATES_FILE's certificates.

    Raises ConfigError naming the setting, the path and why the file cannot be used.
    """
    roots = certificates_in("QUAY_CA_FILE", ca_file) if ca_file else load_roots(None)
    intermediates = certificates_in("QUAY_INTERMEDIATES_FILE", intermediates_file) if intermediates_file else []
    return roots, intermediates
