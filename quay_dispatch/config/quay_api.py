"""Quay's side (QUAY_API_TOKEN): the API that sets up, watches and repairs Quay's notifications, and the URL Quay
calls this relay by. Off, and nothing of it loaded, without the token (docs/configuration.md)."""

from __future__ import annotations

from urllib.parse import urlsplit

from .github import is_loopback
from .reader import Env

MIN_WATCH_INTERVAL = 5.0
QUAY_REFUSES = ("localhost", "127.0.0.1")  # webhook hosts Quay will not save (DESIGN.md, "Quay's side")
_NEEDS_TOKEN = ("QUAY_API_URL", "QUAY_WATCH_INTERVAL", "QUAY_REPAIR", "QUAY_RECOVER", "QUAY_RECOVER_GRACE",
                "QUAY_RECOVER_MAX_AGE")


def quay_api_settings(env: Env, quay_hostnames: tuple[str, ...], acme_domains: tuple[str, ...]) -> dict:
    """QUAY_API_TOKEN, QUAY_API_URL, PUBLIC_URL, QUAY_WATCH_INTERVAL, QUAY_REPAIR, QUAY_RECOVER,
    QUAY_RECOVER_GRACE and QUAY_RECOVER_MAX_AGE (Settings' fields of the same names, in lower case)."""
    public = env.get("PUBLIC_URL") or (f"https://{acme_domains[0]}" if acme_domains else None)
    fields = dict(public_url=_url(env, "PUBLIC_URL", public) if public else None)
    token = env.get("QUAY_API_TOKEN")
    if token is None:
        for name in _NEEDS_TOKEN:
            if env.get(name) is not None:
                env.problems.append(f"{name} set without QUAY_API_TOKEN: Quay's side is off without a token "
                                    "(docs/configuration.md)")
        return fields
    if fields["public_url"] is None:
        env.problems.append("QUAY_API_TOKEN needs PUBLIC_URL, the relay's URL as Quay calls it "
                            "(https://relay.example.com), or ACME_DOMAINS to make it from")
    elif urlsplit(fields["public_url"]).hostname in QUAY_REFUSES:
        env.problems.append(f"PUBLIC_URL={fields['public_url']}: Quay refuses a webhook to localhost or 127.0.0.1; "
                            "give the name or address Quay reaches this relay by")
    grace = env.duration("QUAY_RECOVER_GRACE", "120")
    max_age = env.duration("QUAY_RECOVER_MAX_AGE", "86400")
    if grace and max_age and grace >= max_age:
        env.problems.append(f"QUAY_RECOVER_GRACE ({grace:.0f} s) must be shorter than QUAY_RECOVER_MAX_AGE "
                            f"({max_age:.0f} s): nothing could ever be recovered")
    interval = env.duration("QUAY_WATCH_INTERVAL", "300")
    if interval and interval < MIN_WATCH_INTERVAL:
        env.problems.append(f"QUAY_WATCH_INTERVAL={env.get('QUAY_WATCH_INTERVAL')}: {MIN_WATCH_INTERVAL:.0f} s at "
                            "least, to be gentle with Quay's API")
    api = _url(env, "QUAY_API_URL", env.get("QUAY_API_URL") or f"https://{quay_hostnames[0]}")
    return fields | dict(quay_api_token=token, quay_api_url=api, quay_watch_interval=interval,
                         quay_repair=_on_unless_off(env, "QUAY_REPAIR"),
                         quay_recover=_on_unless_off(env, "QUAY_RECOVER"),
                         quay_recover_grace=grace, quay_recover_max_age=max_age)


def _on_unless_off(env: Env, name: str) -> bool:
    return env.get(name) is None or env.flag(name)


def _url(env: Env, name: str, url: str) -> str | None:
    """`url` without a trailing slash: https, or http on loopback; a host, no credentials, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "is not a URL such as https://relay.example.com"
    elif parts.scheme == "http" and not is_loopback(parts.hostname):
        problem = "must be https (http only on this machine's loopback)"
    elif parts.username or parts.password or parts.query or parts.fragment:
        problem = "may hold no user, password, query or fragment (the incoming token is added where needed)"
    else:
        return url.rstrip("/")
    shown = url if not (parts.username or parts.password) else f"{parts.scheme}://…@{parts.hostname}"
    env.problems.append(f"{name}={shown}: {problem}")
    return None
