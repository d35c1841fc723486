"""gunicorn settings, from the environment (docs/configuration.md).

gunicorn's own command-line flags (--bind, --certfile, --keyfile,
--cert-reqs, --workers, ...) win over what is set here.
"""

import os
import shutil
import ssl
import sys
import tempfile

from quay_dispatch.config import (
    NO_TRUSTED_PROXY,
    ConfigError,
    load_settings,
    quay_certificates,
    stale_metric_files,
    tls_problems,
    trusted_proxies,
)
from quay_dispatch.outbox import StoreUnavailable, open_outbox

try:
    _settings = load_settings(os.environ)
except ConfigError as _exc:
    sys.exit(f"quay-dispatch: {_exc}")

TLS_WORKER = "quay_dispatch.tls_worker.TLSWorker"
STARTUP_STORE_TIMEOUT = 30.0  # seconds the schema migration at start may take (a big outbox's new index)

bind = [f"0.0.0.0:{_settings.port}"]
worker_class = TLS_WORKER
threads = 8
certfile = _settings.tls_cert_file
keyfile = _settings.tls_key_file
cert_reqs = ssl.CERT_REQUIRED  # Quay always presents its certificate
keepalive = 5
# The event loop buffers a request's headers up to what these allow (about 260 kB), then
# gunicorn refuses more with 414 or 431; a Quay call has a few hundred bytes of them.
limit_request_fields = 32
timeout = 30
graceful_timeout = 20
preload_app = False  # each worker imports wsgi.py and starts its own deliverer
control_socket_disable = True
accesslog = None  # the application logs one line per request, without query strings
if _settings.log_format == "json":
    # gunicorn's own lines (worker boots, failed handshakes) as JSON objects too, one a line.
    _json_logger = {"level": "INFO", "handlers": ["error_console"], "propagate": False}
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": ["error_console"]},
        "loggers": {"gunicorn.error": _json_logger, "gunicorn.access": _json_logger},
        "formatters": {"generic": {"()": "quay_dispatch.logs.JSONFormatter"}},
    }
# Nobody is trusted to set forwarding headers unless FORWARDED_ALLOW_IPS (or --forwarded-allow-ips)
# names them (gunicorn's own default would trust 127.0.0.1).
forwarded_allow_ips = ",".join(str(network) for network in _settings.forwarded_allow_ips)


def on_starting(server):
    """Refuse to start on an insecure or unworkable combination, saying what to set."""
    cfg = server.cfg
    problems = []
    if _settings.client_cert_source == "tls":
        if not cfg.is_ssl:
            problems.append(
                "CLIENT_CERT_SOURCE=tls needs TLS: set TLS_CERT_FILE and TLS_KEY_FILE (or --certfile/--keyfile); "
                "behind a router that terminates TLS use CLIENT_CERT_SOURCE=none with INCOMING_TOKEN"
            )
        if cfg.cert_reqs == ssl.CERT_NONE:
            problems.append("CLIENT_CERT_SOURCE=tls needs --cert-reqs 2 (or 1): Quay is identified by its certificate")
        if cfg.worker_class_str != TLS_WORKER:
            problems.append(f"CLIENT_CERT_SOURCE=tls needs --worker-class {TLS_WORKER}")
    outbox = open_outbox(_settings.database_url, STARTUP_STORE_TIMEOUT)
    try:
        outbox.migrate()  # once, before the workers, so that a store problem is one clear message
    except StoreUnavailable as exc:
        problems.append(f"the outbox ({outbox.description}) cannot be opened: {exc}")
    finally:
        outbox.close()
    problems += _trust_what_gunicorn_trusts(cfg)
    problems += _file_problems(cfg)
    if problems:
        sys.exit("quay-dispatch: refusing to start:\n" + "\n".join(f"  - {p}" for p in problems))
    _prepare_metrics()


def _trust_what_gunicorn_trusts(cfg):
    """Hand gunicorn's effective forwarded_allow_ips to the workers, whichever setting it came from.

    The workers read their settings from the environment they inherit from this
    process, so FORWARDED_ALLOW_IPS is set here, before any of them is forked.
    """
    from_environment = cfg.forwarded_allow_ips == [entry for entry in forwarded_allow_ips.split(",") if entry]
    setting = "FORWARDED_ALLOW_IPS" if from_environment else "--forwarded-allow-ips"
    problems = []
    proxies = trusted_proxies(cfg.forwarded_allow_ips, _settings.client_cert_source, setting, problems)
    if _settings.client_cert_source == "header" and not proxies and not problems:
        problems.append(NO_TRUSTED_PROXY)
    if _settings.client_cert_source == "header" and cfg.header_map == "dangerous":
        # A proxy removes the header it sets, not every spelling a server may read as the same one.
        problems.append(f"CLIENT_CERT_SOURCE=header needs gunicorn's --header-map drop or refuse, not dangerous: "
                        f"a client's own {_settings.client_cert_header.replace('-', '_')} header would pass "
                        "the proxy and be read as the certificate")
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(cfg.forwarded_allow_ips)
    return problems


def _file_problems(cfg):
    """The files a worker would load, tried here first: a message naming each setting, not a worker's traceback."""
    problems = []
    if cfg.is_ssl:
        # gunicorn's --certfile and --keyfile win over the environment; name the one in effect.
        cert_setting = _settings.tls_cert_setting if cfg.certfile == _settings.tls_cert_file else "--certfile"
        key_setting = _settings.tls_key_setting if cfg.keyfile == _settings.tls_key_file else "--keyfile"
        problems += tls_problems((cert_setting, cfg.certfile), (key_setting, cfg.keyfile))
    if _settings.client_cert_source in ("tls", "header"):
        try:
            quay_certificates(_settings)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


_own_metrics_dir = None


def _prepare_metrics():
    """prometheus-client's multiprocess mode, so that /metrics adds up every worker's samples.

    Set here, in the master before any worker imports prometheus-client. In a directory
    given in PROMETHEUS_MULTIPROC_DIR, the metric files of a previous run are deleted
    and nothing else; one made here is removed on exit.
    """
    global _own_metrics_dir
    directory = _settings.metrics_dir
    if directory is None:
        directory = _own_metrics_dir = tempfile.mkdtemp(prefix="quay-dispatch-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.makedirs(directory, exist_ok=True)
    for path in stale_metric_files(directory):
        path.unlink(missing_ok=True)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    """A worker's live gauges go with it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
