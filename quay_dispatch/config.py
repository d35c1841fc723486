"""Configuration: read once from the environment, validated, passed down as one object."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from .identity import load_certificates, load_roots
from .outbox import DEFAULT_TIMEOUT as DEFAULT_STORE_TIMEOUT
from .routes import Route, RouteError, parse_inline_routes, parse_toml_routes
from .tls import build_context, handshake_reason

MIN_INCOMING_TOKEN_LENGTH = 24
MAX_STORE_TIMEOUT = 4.0  # seconds: what leaves a direct delivery time to answer Quay within 8 s
DEFAULT_DATABASE_URL = "sqlite:///var/quay-dispatch.sqlite3"
CLIENT_CERT_SOURCES = ("tls", "header", "none")
DEFAULT_CLIENT_CERT_HEADER = "X-SSL-Client-Cert"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # one part of a DNS name, as a certificate names it
_METRICS_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")  # prometheus-client's own


NO_TRUSTED_PROXY = ("CLIENT_CERT_SOURCE=header needs FORWARDED_ALLOW_IPS (or gunicorn's --forwarded-allow-ips): "
                    "the proxy's addresses, the only ones whose client certificate header is believed")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem and what to set."""


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
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR, when the operator chose it

    def __repr__(self) -> str:
        # Never let a secret reach a log or a traceback through repr().
        return (f"Settings(client_cert_source={self.client_cert_source!r}, github_api_url={self.github_api_url!r}, "
                f"routes={len(self.routes)}, dry_run={self.dry_run})")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from environment variables, or raise ConfigError naming each problem."""
    problems: list[str] = []

    def named(*names: str) -> tuple[str, str | None]:
        """The first of `names` that is set, and its value; else the first name and None."""
        for name in names:
            value = env.get(name)
            if value is not None and value.strip() != "":
                return name, value.strip()
        return names[0], None

    def get(*names: str) -> str | None:
        return named(*names)[1]

    def flag(name: str) -> bool:
        value = (env.get(name) or "").strip().lower()
        if value in _TRUE:
            return True
        if value not in _FALSE:
            problems.append(f"{name}={env[name]!r} is not a boolean: use 1/true/yes/on or 0/false/no/off")
        return False

    dry_run = flag("DRY_RUN")
    token = get("GITHUB_TOKEN", "GH_TOKEN")
    app_id, app_key = get("GITHUB_APP_ID"), _app_private_key(env, problems)
    app_key_given = bool(get("GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_FILE"))  # even one refused above
    installation_text = get("GITHUB_APP_INSTALLATION_ID")
    if installation_text is not None and not installation_text.isdigit():
        problems.append(f"GITHUB_APP_INSTALLATION_ID={installation_text!r} is not a number")
    if token and (app_id or app_key_given):
        problems.append("both GITHUB_TOKEN and a GitHub App are set: use one")
    elif bool(app_id) != app_key_given:
        problems.append("a GitHub App needs both GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY (or _FILE)")
    elif not token and not app_id and not dry_run:
        problems.append("no GitHub credentials: set GITHUB_TOKEN (or GH_TOKEN) or a GitHub App "
                        "(GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY), or DRY_RUN=1 to record without sending")
    github_ca_file = get("GITHUB_CA_FILE")
    if github_ca_file and not Path(github_ca_file).is_file():
        problems.append(f"GITHUB_CA_FILE={github_ca_file}: no such file")

    api_url = (get("GITHUB_API_URL") or "https://api.github.com").rstrip("/")
    _check_api_url(api_url, flag("GITHUB_API_ALLOW_HTTP"), problems)

    routes: tuple[Route, ...] = ()
    routes_file, routes_inline = get("ROUTES_FILE"), get("ROUTES")
    try:
        if routes_file and routes_inline:
            problems.append("both ROUTES_FILE and ROUTES are set: use one")
        elif routes_file:
            try:
                text = read_file("ROUTES_FILE", routes_file).decode("utf-8")
            except UnicodeDecodeError:
                raise RouteError(f"ROUTES_FILE={routes_file} is not UTF-8 text") from None
            routes = parse_toml_routes(text, source=f"ROUTES_FILE={routes_file}")
        elif routes_inline:
            routes = parse_inline_routes(routes_inline)
        else:
            problems.append(
                "no routes: set ROUTES (for example ROUTES='myorg/*') or ROUTES_FILE; "
                "without a route nothing would ever be forwarded"
            )
    except (RouteError, ConfigError) as exc:
        problems.append(str(exc))

    hostnames = tuple(h.strip().lower() for h in (get("QUAY_HOSTNAME") or "quay.io").split(",") if h.strip())
    for hostname in hostnames:
        if reason := _hostname_problem(hostname):
            problems.append(f"QUAY_HOSTNAME={hostname!r}: {reason}")

    ca_file, intermediates_file = get("QUAY_CA_FILE"), get("QUAY_INTERMEDIATES_FILE")  # read by quay_certificates

    source = (get("CLIENT_CERT_SOURCE") or "tls").lower()
    if source not in CLIENT_CERT_SOURCES:
        problems.append(f"CLIENT_CERT_SOURCE={source!r}: use one of {', '.join(CLIENT_CERT_SOURCES)}")

    # That header mode names a proxy is checked where gunicorn's --forwarded-allow-ips is known too:
    # gunicorn.conf.py's on_starting, and services.build.
    proxies = trusted_proxies((get("FORWARDED_ALLOW_IPS") or "").split(","), source, "FORWARDED_ALLOW_IPS", problems)

    incoming_token = get("INCOMING_TOKEN")
    if incoming_token is not None and len(incoming_token) < MIN_INCOMING_TOKEN_LENGTH:
        problems.append(
            f"INCOMING_TOKEN is too short ({len(incoming_token)} characters): use at least "
            f"{MIN_INCOMING_TOKEN_LENGTH}, for example from "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if source == "none" and incoming_token is None:
        problems.append(
            "CLIENT_CERT_SOURCE=none without INCOMING_TOKEN would let anyone trigger your workflows: "
            "set INCOMING_TOKEN and put it in Quay's notification URL (https://quay:TOKEN@host/incoming)"
        )

    database_url, store_timeout = _store(env, problems)
    metrics_dir = get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        _check_metrics_dir(metrics_dir, database_url, problems)

    port_text = get("PORT") or "8443"
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else 0
    if not port:
        problems.append(f"PORT={port_text!r} is not a TCP port number")

    log_format = (get("LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        problems.append(f"LOG_FORMAT={log_format!r}: use text or json")

    tls_cert_setting, tls_cert_file = named("TLS_CERT_FILE", "CRT")
    tls_key_setting, tls_key_file = named("TLS_KEY_FILE", "KEY")

    def duration(name: str, default: str) -> float:
        seconds = _duration(get(name) or default)
        if seconds is None or seconds <= 0:
            problems.append(f"{name}={get(name)!r} is not a duration such as 3600, 90m, 24h or 2d")
            return 0.0
        return seconds

    settings = Settings(
        routes=routes,
        github_token=token,
        github_app_id=app_id,
        github_app_private_key=app_key,
        github_app_installation_id=int(installation_text) if (installation_text or "").isdigit() else None,
        github_ca_file=github_ca_file,
        github_api_url=api_url,
        quay_hostnames=hostnames or ("quay.io",),
        quay_ca_file=ca_file,
        quay_intermediates_file=intermediates_file,
        client_cert_source=source,
        client_cert_header=get("CLIENT_CERT_HEADER") or DEFAULT_CLIENT_CERT_HEADER,
        forwarded_allow_ips=proxies,
        incoming_token=incoming_token,
        database_url=database_url,
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        tls_cert_setting=tls_cert_setting,
        tls_key_setting=tls_key_setting,
        port=port,
        debug=flag("DEBUG"),
        log_format=log_format,
        dry_run=dry_run,
        delivery_max_age=duration("DELIVERY_MAX_AGE", "24h"),
        delivery_retention=duration("DELIVERY_RETENTION", "14d"),
        github_timeout=duration("GITHUB_TIMEOUT", "10"),
        forward_test_notifications=flag("FORWARD_TEST_NOTIFICATIONS"),
        store_timeout=store_timeout,
        metrics_dir=metrics_dir,
    )
    if problems:
        raise listing(problems)
    return settings


def load_store_settings(env: Mapping[str, str]) -> tuple[str, float]:
    """DATABASE_URL and STORE_TIMEOUT: all that the commands that read or requeue the outbox need."""
    problems: list[str] = []
    store = _store(env, problems)
    if problems:
        raise listing(problems)
    return store


def _store(env: Mapping[str, str], problems: list[str]) -> tuple[str, float]:
    database_url = (env.get("DATABASE_URL") or "").strip() or DEFAULT_DATABASE_URL
    _check_database_url(database_url, problems)
    return database_url, _store_timeout((env.get("STORE_TIMEOUT") or "").strip() or None, problems)


def listing(problems: list[str]) -> ConfigError:
    """The ConfigError that lists `problems`, one a line."""
    return ConfigError("configuration error:\n" + "\n".join(f"  - {p}" for p in problems))


def _app_private_key(env: Mapping[str, str], problems: list[str]) -> str | None:
    """The GitHub App's private key, from GITHUB_APP_PRIVATE_KEY (PEM text) or its _FILE; never repeated."""
    text, path = env.get("GITHUB_APP_PRIVATE_KEY", "").strip(), env.get("GITHUB_APP_PRIVATE_KEY_FILE", "").strip()
    if text and path:
        problems.append("both GITHUB_APP_PRIVATE_KEY and GITHUB_APP_PRIVATE_KEY_FILE are set: use one")
        return None
    source = f"GITHUB_APP_PRIVATE_KEY_FILE={path}" if path else "GITHUB_APP_PRIVATE_KEY"
    if path:
        try:
            text = read_file("GITHUB_APP_PRIVATE_KEY_FILE", path).decode("ascii")
        except ConfigError as exc:
            problems.append(str(exc))
            return None
        except UnicodeDecodeError:
            text = "not PEM"
    if not text:
        return None
    # A PaaS often keeps a multi-line value with literal \n: accept that too.
    text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        problems.append(f"{source} is not an unencrypted PEM private key")
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        problems.append("the GitHub App private key must be an RSA key (GitHub signs App JWTs with RS256)")
        return None
    return text


def _check_database_url(url: str, problems: list[str]) -> None:
    """DATABASE_URL must name SQLite (sqlite:///relative, sqlite:////absolute) or PostgreSQL."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return
    if url.startswith(("postgresql://", "postgres://")):
        return
    # The URL itself is not repeated: it may hold a password.
    problems.append(
        "DATABASE_URL is not a database URL: use sqlite:///relative/path, sqlite:////absolute/path "
        "or postgresql://user:password@host/database"
    )


def _hostname_problem(hostname: str) -> str | None:
    """Why QUAY_HOSTNAME's `hostname` cannot be checked against Quay's certificate, or None.

    A wildcard would accept any host of the domain, and an IP address is not a name
    Quay's certificate carries; either made every genuine call fail before.
    """
    if "*" in hostname:
        return "a wildcard is not allowed: name each Quay host (the certificate may be a wildcard one)"
    try:
        ipaddress.ip_address(hostname)
        return "an IP address is not allowed: use the host name in Quay's certificate, such as quay.io"
    except ValueError:
        pass
    labels = hostname.split(".")
    if len(hostname) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return "not a valid host name (letters, digits and '-', in parts separated by dots), such as quay.io"
    return None


def _check_api_url(url: str, allow_http: bool, problems: list[str]) -> None:
    """GITHUB_API_URL must be https: the token and the App's keys go to it. Plain http is for a
    loopback address (a test server), or needs GITHUB_API_ALLOW_HTTP=1."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problems.append(f"GITHUB_API_URL={url!r} is not an https URL such as https://api.github.com")
    elif parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        problems.append(f"GITHUB_API_URL={url!r} is plain http: the GitHub token would cross the network "
                        "in clear text; use https, or set GITHUB_API_ALLOW_HTTP=1 if the network is private "
                        "and you accept that risk")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_metrics_dir(directory: str, database_url: str, problems: list[str]) -> None:
    """PROMETHEUS_MULTIPROC_DIR is cleared of old metric files at start: it must not hold the outbox."""
    if not database_url.startswith("sqlite:///"):
        return
    outbox = Path(database_url[len("sqlite:///"):]).resolve()
    if outbox.is_relative_to(Path(directory).resolve()):
        problems.append(f"PROMETHEUS_MULTIPROC_DIR={directory}: it holds the outbox ({outbox}); give the "
                        "metrics a directory of their own, such as /tmp/quay-dispatch-metrics")


def stale_metric_files(directory: str) -> list[Path]:
    """The files in PROMETHEUS_MULTIPROC_DIR that prometheus-client made: the only ones ever deleted."""
    return [path for path in Path(directory).iterdir() if path.is_file() and _METRICS_FILE.fullmatch(path.name)]


def _store_timeout(text: str | None, problems: list[str]) -> float:
    """STORE_TIMEOUT: a few seconds at most, so that a notification the store cannot take still
    leaves time to send it to GitHub directly within Quay's 10 s."""
    if text is None:
        return DEFAULT_STORE_TIMEOUT
    seconds = _duration(text)
    if seconds is None or not 0.1 <= seconds <= MAX_STORE_TIMEOUT:
        problems.append(f"STORE_TIMEOUT={text!r}: use a duration from 0.1 to {MAX_STORE_TIMEOUT:g} seconds "
                        "(for example 2 or 1.5s); Quay gives up after 10 s")
        return DEFAULT_STORE_TIMEOUT
    return seconds


def _duration(text: str) -> float | None:
    """Seconds in '3600', '90s', '90m', '24h' or '2d'; None when unreadable."""
    match = _DURATION.fullmatch(text)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def read_file(setting: str, path: str) -> bytes:
    """The contents of the file `setting` names, or a ConfigError with the setting, the path and why not."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        reason = "does not exist"
    except PermissionError:
        reason = f"cannot be read: permission denied (the service runs as uid {os.getuid()})"
    except IsADirectoryError:
        reason = "is a directory, not a file"
    except OSError as exc:
        reason = f"cannot be read: {(exc.strerror or str(exc)).lower()}"
    raise ConfigError(f"{setting}={path} {reason}")


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


def quay_certificates(settings: Settings) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """The trusted roots (QUAY_CA_FILE, else certifi's bundle) and QUAY_INTERMEDIATES_FILE's certificates.

    Raises ConfigError naming the setting, the path and why the file cannot be used.
    """
    roots = _certificates("QUAY_CA_FILE", settings.quay_ca_file) if settings.quay_ca_file else load_roots(None)
    intermediates = []
    if settings.quay_intermediates_file:
        intermediates = _certificates("QUAY_INTERMEDIATES_FILE", settings.quay_intermediates_file)
    return roots, intermediates


def _certificates(setting: str, path: str) -> list[x509.Certificate]:
    source = f"{setting}={path}"
    try:
        certificates = load_certificates(read_file(setting, path), source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not certificates:
        raise ConfigError(f"{source} is not a PEM certificate")
    return certificates


def tls_problems(cert: tuple[str, str | None], key: tuple[str, str | None]) -> list[str]:
    """Why the certificate and key files cannot serve TLS; each pair is (setting, path), path None when unset.

    Checked before any worker builds its TLS context, so that the operator reads the setting,
    the path and the reason instead of OpenSSL's error list.
    """
    (cert_setting, cert_path), (key_setting, key_path) = cert, key
    if cert_path is None:
        return [f"{key_setting} is set but no certificate: set TLS_CERT_FILE (or --certfile) too"]
    if key_path is None:  # gunicorn's rule: the key is then in the certificate file
        key_setting, key_path = cert_setting, cert_path
    problems: list[str] = []
    certificates = private_key = None
    try:
        certificates = _certificates(cert_setting, cert_path)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        private_key = _private_key(key_setting, key_path)
    except ConfigError as exc:
        problems.append(str(exc))
    if certificates is None or private_key is None:
        return list(dict.fromkeys(problems))  # a key in the certificate file: one message for one file
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificates[0].public_key().public_bytes(*spki) != private_key.public_key().public_bytes(*spki):
        return [f"{cert_setting} and {key_setting} do not match: the certificate in {cert_path} "
                f"is not for the key in {key_path}"]
    try:
        build_context(cert_path, key_path, ssl.CERT_NONE)
    except SSL.Error as exc:
        return [f"{cert_setting}={cert_path} and {key_setting}={key_path} cannot serve TLS: {handshake_reason(exc)}"]
    return []


def _private_key(setting: str, path: str):
    data = read_file(setting, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{setting}={path} is an encrypted private key: the service needs it without a "
                          "passphrase") from None
    except ValueError:
        raise ConfigError(f"{setting}={path} is not a PEM private key") from None
