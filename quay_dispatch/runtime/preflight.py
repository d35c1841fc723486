"""Every check made before the service serves, in one place.

What the environment says by itself is checked where it is read (config/, each parser
gathering its problems). What needs more is checked here: gunicorn's settings in
effect (its flags win over gunicorn.conf.py), the files the settings name, the store.
Each problem names the setting to change; all of them are reported together.
"""

from __future__ import annotations

import ipaddress
import runpy
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from ..config import NO_TRUSTED_PROXY, ConfigError, Settings, quay_certificates, tls_problems, trusted_proxies
from ..config.admin import canonical_address
from ..outbox import StoreUnavailable, open_outbox
from ..outbox.watchdog import SLOW

TLS_WORKER = "quay_dispatch.tls_worker.TLSWorker"
STARTUP_STORE_TIMEOUT = 30.0  # seconds the schema migration at start may take (a big outbox's new index)
STARTUP_CONNECT_TIMEOUT = 5.0  # seconds to reach a database server at start: answering needs no more
GUNICORN_CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def start_problems(settings: Settings) -> list[str]:
    """What the start would refuse, for check-config: serving_problems() on gunicorn's settings as
    `gunicorn -c gunicorn.conf.py wsgi:app` has them (GUNICORN_CMD_ARGS included; flags on a command line that
    check-config does not see are not)."""
    from gunicorn.config import Config

    cfg = Config()
    for name, value in runpy.run_path(str(GUNICORN_CONF)).items():
        if name in cfg.settings:
            cfg.set(name, value)
    for name, value in vars(cfg.parser().parse_args(cfg.get_cmd_args_from_env())).items():
        if value is not None and name != "args":
            cfg.set(name, value)
    return serving_problems(settings, cfg, lambda said: None)


def serving_problems(settings: Settings, cfg, say: Callable[[str], None]) -> list[str]:
    """What gunicorn's master finds wrong before it forks a worker; `cfg` is gunicorn's Config, `say` its log's
    info (for what the start waits for)."""
    problems = _tls_mode_problems(settings, cfg)
    # gunicorn's --forwarded-allow-ips, --certfile and --keyfile win over the environment: name the one in effect.
    from_environment = cfg.forwarded_allow_ips == [str(network) for network in settings.forwarded_allow_ips]
    problems += proxy_problems(settings, cfg.forwarded_allow_ips,
                               "FORWARDED_ALLOW_IPS" if from_environment else "--forwarded-allow-ips")
    if settings.client_cert_source == "header" and cfg.header_map == "dangerous":
        # A proxy removes the header it sets, not every spelling a server may read as the same one.
        problems.append(f"CLIENT_CERT_SOURCE=header needs gunicorn's --header-map drop or refuse, not dangerous: "
                        f"a client's own {settings.client_cert_header.replace('-', '_')} header would pass "
                        "the proxy and be read as the certificate")
    problems += _quay_file_problems(settings)
    if cfg.is_ssl:
        cert_setting = settings.tls_cert_setting if cfg.certfile == settings.tls_cert_file else "--certfile"
        key_setting = settings.tls_key_setting if cfg.keyfile == settings.tls_key_file else "--keyfile"
        problems += tls_problems((cert_setting, cfg.certfile), (key_setting, cfg.keyfile))
    problems += _admin_problems(settings, cfg.bind)
    problems += _store_problems(settings, say)
    return problems


def _admin_problems(settings: Settings, binds: list[str]) -> list[str]:
    """ADMIN_BIND: a port that none of gunicorn's own binds takes (the page must never share Quay's door)."""
    if settings.admin_bind is None:
        return []
    host, port = settings.admin_bind
    for bind in binds:
        bound_host, _, bound_port = bind.rpartition(":")
        if bound_port == str(port) and _may_overlap(canonical_address(host), bound_host.strip("[]")):
            return [f"ADMIN_BIND={admin_address(settings)} is also where the service listens ({bind}): give the "
                    "operator's page a port of its own"]
    return []


def _may_overlap(address: ipaddress.IPv4Address | ipaddress.IPv6Address, bound: str) -> bool:
    """Whether a bind's host (an address, a name, or nothing for every address) may take `address`'s port."""
    if address.is_unspecified:
        return True
    try:
        other = canonical_address(bound)
    except ValueError:
        return True  # every address, or a name (localhost, say) that may resolve to this one
    return other.is_unspecified or other == address


def admin_address(settings: Settings) -> str:
    """ADMIN_BIND as gunicorn writes a bind: host:port, an IPv6 address in brackets."""
    host, port = settings.admin_bind
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_problems(settings: Settings) -> list[str]:
    """What the application needs besides valid settings, wherever it runs: a trusted proxy, Quay's CA files."""
    proxies = [str(network) for network in settings.forwarded_allow_ips]
    return proxy_problems(settings, proxies, "FORWARDED_ALLOW_IPS") + _quay_file_problems(settings)


def proxy_problems(settings: Settings, entries: list[str], setting: str) -> list[str]:
    """In header mode, the proxies `setting` names: at least one, and not `*` (a forged header from anyone)."""
    problems: list[str] = []
    proxies = trusted_proxies(entries, settings.client_cert_source, setting, problems)
    if settings.client_cert_source == "header" and not proxies and not problems:
        problems.append(NO_TRUSTED_PROXY)
    return problems


def _quay_file_problems(settings: Settings) -> list[str]:
    """QUAY_CA_FILE and QUAY_INTERMEDIATES_FILE, when a certificate identifies Quay: readable certificates."""
    if settings.client_cert_source not in ("tls", "header"):
        return []
    try:
        quay_certificates(settings.quay_ca_file, settings.quay_intermediates_file)
    except ConfigError as exc:
        return [str(exc)]
    return []


def _tls_mode_problems(settings: Settings, cfg) -> list[str]:
    """CLIENT_CERT_SOURCE=tls needs the TLS worker, serving TLS and asking for a certificate; ACME needs the same."""
    problems = _acme_problems(settings, cfg)
    if settings.client_cert_source != "tls":
        return problems
    if not (cfg.is_ssl or settings.acme_domains):
        problems.append(
            "CLIENT_CERT_SOURCE=tls needs TLS: set TLS_CERT_FILE and TLS_KEY_FILE (or --certfile/--keyfile); "
            "behind a router that terminates TLS use CLIENT_CERT_SOURCE=none with INCOMING_TOKEN"
        )
    if cfg.cert_reqs == ssl.CERT_NONE:
        problems.append("CLIENT_CERT_SOURCE=tls needs --cert-reqs 2 (or 1): Quay is identified by its certificate")
    if cfg.worker_class_str != TLS_WORKER:
        problems.append(f"CLIENT_CERT_SOURCE=tls needs --worker-class {TLS_WORKER}")
    return problems


def _acme_problems(settings: Settings, cfg) -> list[str]:
    """ACME_DOMAINS: the certificate comes from the CA, to a service that terminates TLS itself."""
    if not settings.acme_domains:
        return []
    problems = []
    if cfg.certfile:
        setting = settings.tls_cert_setting if cfg.certfile == settings.tls_cert_file else "--certfile"
        problems.append(f"ACME_DOMAINS and {setting} are both set: the certificate comes from ACME or from a file, "
                        "not both; unset one")
    if settings.client_cert_source != "tls":
        problems.append(f"ACME_DOMAINS needs the service to terminate TLS itself (CLIENT_CERT_SOURCE=tls): with "
                        f"CLIENT_CERT_SOURCE={settings.client_cert_source}, TLS ends at a proxy or a router, which "
                        "holds the certificate")
    return problems


def _store_problems(settings: Settings, say: Callable[[str], None]) -> list[str]:
    """The outbox reached, then its schema brought up to date, once, before the workers: each within a
    deadline of its own, so that a server that never answers is told apart from a long migration."""
    outbox = open_outbox(settings.database_url, STARTUP_STORE_TIMEOUT, STARTUP_CONNECT_TIMEOUT)
    outbox.deadline_name = "the start-up migration's deadline"
    say(f"opening the outbox ({outbox.description}): {STARTUP_CONNECT_TIMEOUT:g} s at most to connect, "
        f"{STARTUP_STORE_TIMEOUT:g} s to bring its schema up to date")
    try:
        outbox.connect()
        started = time.monotonic()
        outbox.migrate()
        if settings.acme_domains:
            outbox.restrict_to_owner()  # it holds ACME's private keys
    except StoreUnavailable as exc:
        return [f"the outbox ({outbox.description}) cannot be opened: {exc}"]
    finally:
        outbox.close()
    if (elapsed := time.monotonic() - started) > SLOW:
        say(f"the outbox's schema migration took {elapsed:.1f} s")
    return []
