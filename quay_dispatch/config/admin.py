"""The operator's page: where it listens (ADMIN_BIND), the names it answers to (ADMIN_HOSTS) and, off loopback, the
token it asks for (ADMIN_TOKEN)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re

from .reader import Env

MIN_TOKEN_LENGTH = 24
# Handed by gunicorn's master to the workers it forks, so that all of them sign sessions alike when no
# ADMIN_TOKEN is set (a loopback page); gunicorn.conf.py sets it, never the operator.
SECRET_VARIABLE = "QUAY_DISPATCH_ADMIN_SECRET"
_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def admin_settings(env: Env) -> dict:
    """ADMIN_BIND, ADMIN_HOSTS and ADMIN_TOKEN (Settings' fields admin_bind, admin_hosts, admin_token,
    admin_secret); off without ADMIN_BIND."""
    bind, token, hosts = env.get("ADMIN_BIND"), env.get("ADMIN_TOKEN"), env.get("ADMIN_HOSTS")
    if not bind:
        for name, value in (("ADMIN_TOKEN", token), ("ADMIN_HOSTS", hosts)):
            if value:
                env.problems.append(f"{name} set without ADMIN_BIND: set the address of the operator's page "
                                    f"(ADMIN_BIND=127.0.0.1:9090), or unset {name}")
        return dict(admin_bind=None)
    address = _address(env, bind)
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        env.problems.append(f"ADMIN_TOKEN is {len(token)} characters long: use {MIN_TOKEN_LENGTH} at least "
                            "(for example: openssl rand -hex 24)")
    elif token is None and address and not canonical_address(address[0]).is_loopback:
        env.problems.append(f"ADMIN_BIND={bind} is not a loopback address: anyone who reaches it could redeliver "
                            f"events; set ADMIN_TOKEN ({MIN_TOKEN_LENGTH} characters at least), or bind 127.0.0.1")
    # Sessions and forms are signed with a key every worker and replica derives alike: from the token, else
    # from what the master handed down.
    secret = hmac.new(token.encode(), b"quay-dispatch admin sessions", hashlib.sha256).hexdigest() if token \
        else env.get(SECRET_VARIABLE)
    return dict(admin_bind=address, admin_hosts=_host_names(env, hosts or ""), admin_token=token,
                admin_secret=secret)


def _host_names(env: Env, hosts: str) -> tuple[str, ...]:
    """ADMIN_HOSTS: the names (or addresses) besides its own address that the page answers to, in lower case."""
    names = tuple(name.strip().lower().rstrip(".") for name in hosts.split(",") if name.strip())
    for name in names:
        if not (_HOST_NAME.fullmatch(name) or _is_address(name)):
            env.problems.append(f"ADMIN_HOSTS: {name!r} is not a host name (no port, no scheme, no wildcard: "
                                "relay.example.com)")
    return names


def _address(env: Env, bind: str) -> tuple[str, int] | None:
    """ADMIN_BIND as (address, port): an IP address (IPv6 in brackets) or localhost, and a port. The address is
    kept as the system writes it (`[0:0::1]` is `::1`, `[::FFFF:127.0.0.1]` is `127.0.0.1`)."""
    host, _, port = bind.rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        host = str(canonical_address(host))
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        env.problems.append(f"ADMIN_BIND={bind!r}: use an address and a port, such as 127.0.0.1:9090 or "
                            "[::1]:9090 (0.0.0.0:9090 with ADMIN_TOKEN)")
        return None
    return host, number


def is_admin_listener(sockname, admin_bind: tuple[str, int] | None) -> bool:
    """Whether a listener's getsockname() is ADMIN_BIND's address and port, however either writes the address."""
    if admin_bind is None or not isinstance(sockname, tuple):  # a unix socket's name is its path
        return False
    try:
        return sockname[1] == admin_bind[1] and canonical_address(sockname[0]) == canonical_address(admin_bind[0])
    except ValueError:
        return False


def canonical_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address as one value however it is written: an IPv4-mapped IPv6 address is its IPv4 address (it
    reaches the same listeners, and only then is 127.0.0.1 seen as loopback). Raises ValueError."""
    address = ipaddress.ip_address(text)
    return getattr(address, "ipv4_mapped", None) or address


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
