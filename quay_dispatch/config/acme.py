"""Certificates from ACME: for which names (ACME_DOMAINS), from which CA, as which account (ACME_*)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from .github import is_loopback
from .reader import Env, dns_name_problem

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
DIRECTORY_NAMES = {"letsencrypt": LETS_ENCRYPT,
                   "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory"}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_OTHERS = ("ACME_EMAIL", "ACME_DIRECTORY", "ACME_CA_FILE", "ACME_PROFILE", "ACME_EAB_KID", "ACME_EAB_HMAC_KEY")


def acme_settings(env: Env) -> dict:
    """ACME_DOMAINS, ACME_EMAIL, ACME_DIRECTORY, ACME_CA_FILE, ACME_PROFILE, ACME_EAB_KID, ACME_EAB_HMAC_KEY
    (Settings' fields); ACME is off without ACME_DOMAINS."""
    text = env.get("ACME_DOMAINS")
    if not text:
        if stray := [name for name in _OTHERS if env.get(name)]:
            env.problems.append(f"{', '.join(stray)} set without ACME_DOMAINS: set the names to get a "
                                "certificate for, or unset them")
        return dict(acme_domains=())
    domains = tuple(dict.fromkeys(name.strip().lower().rstrip(".") for name in text.split(",") if name.strip()))
    for name in domains:
        if reason := _domain_problem(name):
            env.problems.append(f"ACME_DOMAINS={name!r}: {reason}")
    email = env.get("ACME_EMAIL")
    if email and not _EMAIL.fullmatch(email):
        env.problems.append(f"ACME_EMAIL={email!r} is not an e-mail address")
    directory = _directory(env)
    ca_file = env.get("ACME_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        env.problems.append(f"ACME_CA_FILE={ca_file}: no such file")
    eab_kid, eab_key = env.get("ACME_EAB_KID"), env.get("ACME_EAB_HMAC_KEY")
    if bool(eab_kid) != bool(eab_key):
        env.problems.append("external account binding needs both ACME_EAB_KID and ACME_EAB_HMAC_KEY")
    return dict(acme_domains=domains, acme_email=email, acme_directory=directory, acme_ca_file=ca_file,
                acme_profile=env.get("ACME_PROFILE"), acme_eab_kid=eab_kid, acme_eab_hmac_key=eab_key)


def _domain_problem(name: str) -> str | None:
    if "*" in name:
        return "a wildcard is not allowed: tls-alpn-01 cannot validate one (name each host)"
    return dns_name_problem(name, "relay.example.com")


def _directory(env: Env) -> str:
    """ACME_DIRECTORY: Let's Encrypt's by default, a name of DIRECTORY_NAMES, or an RFC 8555 directory URL."""
    given = env.get("ACME_DIRECTORY") or "letsencrypt"
    url = DIRECTORY_NAMES.get(given.lower(), given)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        env.problems.append(f"ACME_DIRECTORY={given!r}: use letsencrypt, letsencrypt-staging or a directory URL "
                            "such as https://acme-v02.api.letsencrypt.org/directory")
    elif parts.scheme == "http" and not is_loopback(parts.hostname):
        env.problems.append(f"ACME_DIRECTORY={given!r} is plain http: the account's requests would cross the "
                            "network unprotected; use https (plain http is accepted on loopback only, for tests)")
    return url
