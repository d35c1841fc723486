"""Settings: everything the service needs to know, read once from the environment by one parser per concern."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..domain.routes import Route, RouteError, parse_inline_routes, parse_toml_routes
from .acme import acme_settings
from .admin import admin_settings
from .github import github_settings
from .quay import DEFAULT_CLIENT_CERT_HEADER, Network, quay_settings
from .quay_api import quay_api_settings
from .reader import ConfigError, Env, read_file
from .store import DEFAULT_DATABASE_URL, DEFAULT_STORE_TIMEOUT, metrics_settings, store_settings
from .tls import tls_settings


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know, validated."""

    routes: tuple[Route, ...]
    github_token: str | None = None
    github_app_id: str | None = None
    github_app_private_key: str | None = None
    github_app_installation_id: int | None = None
    github_ca_file: str | None = None
    github_api_url: str = "https://api.github.com"
    quay_hostnames: tuple[str, ...] = ("quay.io",)
    quay_ca_file: str | None = None
    quay_intermediates_file: str | None = None
    client_cert_source: str = "tls"
    client_cert_header: str = DEFAULT_CLIENT_CERT_HEADER
    forwarded_allow_ips: tuple[Network, ...] = ()
    incoming_token: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_cert_setting: str = "TLS_CERT_FILE"  # the variable tls_cert_file came from (or its alias CRT)
    tls_key_setting: str = "TLS_KEY_FILE"
    port: int = 8443
    debug: bool = False
    log_format: str = "text"
    dry_run: bool = False
    delivery_max_age: float = 24 * 3600.0
    delivery_retention: float = 14 * 86400.0
    github_timeout: float = 10.0
    forward_test_notifications: bool = False
    store_timeout: float = DEFAULT_STORE_TIMEOUT
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR: the operator's, or in a worker the master's own
    acme_domains: tuple[str, ...] = ()  # ACME is on when set
    acme_email: str | None = None
    acme_directory: str | None = None
    acme_ca_file: str | None = None
    acme_profile: str | None = None
    acme_eab_kid: str | None = None
    acme_eab_hmac_key: str | None = None
    admin_bind: tuple[str, int] | None = None  # the operator's page is on when set
    admin_hosts: tuple[str, ...] = ()  # names it answers to besides its address (ADMIN_HOSTS)
    admin_token: str | None = None
    admin_secret: str | None = None  # what signs its sessions and forms, the same in every worker
    public_url: str | None = None  # the relay as Quay calls it (PUBLIC_URL, else from ACME_DOMAINS)
    quay_api_token: str | None = None  # Quay's side is on when set
    quay_api_url: str | None = None
    quay_watch_interval: float = 300.0
    quay_repair: bool = True
    quay_recover: bool = True
    quay_recover_grace: float = 120.0
    quay_recover_max_age: float = 86400.0

    def __repr__(self) -> str:
        # Never let a secret reach a log or a traceback through repr().
        return (f"Settings(client_cert_source={self.client_cert_source!r}, github_api_url={self.github_api_url!r}, "
                f"routes={len(self.routes)}, dry_run={self.dry_run})")


def environment_settings() -> Settings:
    """This process's Settings, from its environment: with environment_store_settings, the one reader of os.environ.

    Each process calls it once, where it starts (gunicorn.conf.py in the master, wsgi.py's application in
    a worker, a CLI command, the health check) and passes the result down. A worker reads its own rather
    than the master's: it inherits what the master settled before forking it (gunicorn's effective
    FORWARDED_ALLOW_IPS, the metrics directory), and the workers a SIGHUP starts read ROUTES_FILE anew.
    """
    return load_settings(os.environ)


def environment_store_settings() -> tuple[str, float]:
    """DATABASE_URL and STORE_TIMEOUT from this process's environment (the commands that read the outbox)."""
    return load_store_settings(os.environ)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from environment variables, or raise ConfigError naming each problem."""
    env = Env(environ)
    dry_run = env.flag("DRY_RUN")
    fields = github_settings(env, dry_run)
    fields["routes"] = _routes(env)
    fields |= quay_settings(env)
    fields |= store_settings(env)
    fields |= metrics_settings(env, fields["database_url"])
    fields |= _ops_settings(env)
    fields |= tls_settings(env)
    fields |= acme_settings(env)
    fields |= admin_settings(env)
    fields |= quay_api_settings(env, fields["quay_hostnames"], fields.get("acme_domains", ()))
    fields |= _delivery_settings(env)
    if fields.get("quay_recover") and fields["quay_recover_max_age"] >= fields["delivery_retention"]:
        env.problems.append(f"QUAY_RECOVER_MAX_AGE ({fields['quay_recover_max_age']:.0f} s) must be shorter than "
                            f"DELIVERY_RETENTION ({fields['delivery_retention']:.0f} s): a recovered event is known "
                            "by the delivery kept for it, and would be recovered again once that is pruned")
    env.check()
    return Settings(dry_run=dry_run, **fields)


def load_store_settings(environ: Mapping[str, str]) -> tuple[str, float]:
    """DATABASE_URL and STORE_TIMEOUT: all that the commands that read or requeue the outbox need."""
    env = Env(environ)
    store = store_settings(env)
    env.check()
    return store["database_url"], store["store_timeout"]


def _routes(env: Env) -> tuple[Route, ...]:
    """ROUTES or ROUTES_FILE: which Quay repositories go to which GitHub repositories."""
    routes_file, routes_inline = env.get("ROUTES_FILE"), env.get("ROUTES")
    try:
        if routes_file and routes_inline:
            env.problems.append("both ROUTES_FILE and ROUTES are set: use one")
        elif routes_file:
            try:
                text = read_file("ROUTES_FILE", routes_file).decode("utf-8")
            except UnicodeDecodeError:
                raise RouteError(f"ROUTES_FILE={routes_file} is not UTF-8 text") from None
            return parse_toml_routes(text, source=f"ROUTES_FILE={routes_file}")
        elif routes_inline:
            return parse_inline_routes(routes_inline)
        else:
            env.problems.append("no routes: set ROUTES (for example ROUTES='myorg/*') or ROUTES_FILE; "
                                "without a route nothing would ever be forwarded")
    except (RouteError, ConfigError) as exc:
        env.problems.append(str(exc))
    return ()


def _ops_settings(env: Env) -> dict:
    """PORT and LOG_FORMAT (Settings' fields)."""
    port_text = env.get("PORT") or "8443"
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else 0
    if not port:
        env.problems.append(f"PORT={port_text!r} is not a TCP port number")
    log_format = (env.get("LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        env.problems.append(f"LOG_FORMAT={log_format!r}: use text or json")
    return dict(port=port, log_format=log_format)


def _delivery_settings(env: Env) -> dict:
    """DEBUG, DELIVERY_MAX_AGE, DELIVERY_RETENTION, GITHUB_TIMEOUT, FORWARD_TEST_NOTIFICATIONS (Settings' fields)."""
    return dict(debug=env.flag("DEBUG"), delivery_max_age=env.duration("DELIVERY_MAX_AGE", "24h"),
                delivery_retention=env.duration("DELIVERY_RETENTION", "14d"),
                github_timeout=env.duration("GITHUB_TIMEOUT", "10"),
                forward_test_notifications=env.flag("FORWARD_TEST_NOTIFICATIONS"))
