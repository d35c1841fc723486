"""The operator's page: where it listens (ADMIN_BIND) and, off loopback, the token it asks for (ADMIN_TOKEN)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from .reader import Env

MIN_TOKEN_LENGTH = 24
# Handed by gunicorn's master to the workers it forks, so that all of them sign sessions alike when no
# ADMIN_TOKEN is set (a loopback page); gunicorn.conf.py sets it, never the operator.
SECRET_VARIABLE = "QUAY_DISPATCH_ADMIN_SECRET"


def admin_settings(env: Env) -> dict:
    """ADMIN_BIND and ADMIN_TOKEN (Settings' fields admin_bind, admin_token, admin_secret); off without
    ADMIN_BIND."""
    bind, token = env.get("ADMIN_BIND"), env.get("ADMIN_TOKEN")
    if not bind:
        if token:
            env.problems.append("ADMIN_TOKEN set without ADMIN_BIND: set the address of the operator's page "
                                "(ADMIN_BIND=127.0.0.1:9090), or unset the token")
        return dict(admin_bind=None)
    address = _address(env, bind)
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        env.problems.append(f"ADMIN_TOKEN is {len(token)} characters long: use {MIN_TOKEN_LENGTH} at least "
                            "(for example: openssl rand -hex 24)")
    elif token is None and address and not ipaddress.ip_address(address[0]).is_loopback:
        env.problems.append(f"ADMIN_BIND={bind} is not a loopback address: anyone who reaches it could redeliver "
                            f"events; set ADMIN_TOKEN ({MIN_TOKEN_LENGTH} characters at least), or bind 127.0.0.1")
    # Sessions and forms are signed with a key every worker and replica derives alike: from the token, else
    # from what the master handed down.
    secret = hmac.new(token.encode(), b"quay-dispatch admin sessions", hashlib.sha256).hexdigest() if token \
        else env.get(SECRET_VARIABLE)
    return dict(admin_bind=address, admin_token=token, admin_secret=secret)


def _address(env: Env, bind: str) -> tuple[str, int] | None:
    """ADMIN_BIND as (address, port): an IP address (IPv6 in brackets) or localhost, and a port."""
    host, _, port = bind.rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        env.problems.append(f"ADMIN_BIND={bind!r}: use an address and a port, such as 127.0.0.1:9090 or "
                            "[::1]:9090 (0.0.0.0:9090 with ADMIN_TOKEN)")
        return None
    return host, number
