"""gunicorn settings, from the environment (docs/configuration.md).

gunicorn's own command-line flags (--bind, --certfile, --keyfile,
--cert-reqs, --workers, ...) win over what is set here.
"""

import gc
import os
import secrets
import shutil
import ssl
import sys
import tempfile

from gunicorn import sock as gunicorn_sockets

from quay_dispatch.config import ADMIN_SECRET_VARIABLE, ConfigError, environment_settings, stale_metric_files
from quay_dispatch.config.admin import is_admin_listener
from quay_dispatch.runtime.preflight import TLS_WORKER, admin_address, serving_problems

try:
    _settings = environment_settings()
except ConfigError as _exc:
    sys.exit(f"quay-dispatch: {_exc}")

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
sendfile = False  # the TLS worker writes through its own streams (the page's static files), never sendfile()
accesslog = None  # the application logs one line per request, without query strings
if _settings.log_format == "json":
    # gunicorn's own lines (worker boots, failed handshakes) as JSON objects too, one a line.
    _json_logger = {"level": "INFO", "handlers": ["error_console"], "propagate": False}
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": ["error_console"]},
        "loggers": {"gunicorn.error": _json_logger, "gunicorn.access": _json_logger},
        "formatters": {"generic": {"()": "quay_dispatch.runtime.logs.JSONFormatter"}},
    }
# Nobody is trusted to set forwarding headers unless FORWARDED_ALLOW_IPS (or --forwarded-allow-ips)
# names them (gunicorn's own default would trust 127.0.0.1).
forwarded_allow_ips = ",".join(str(network) for network in _settings.forwarded_allow_ips)


def on_starting(server):
    """Refuse to start on an insecure or unworkable combination, saying what to set (runtime/preflight.py)."""
    if problems := serving_problems(_settings, server.cfg, server.log.info):
        sys.exit("quay-dispatch: refusing to start:\n" + "\n".join(f"  - {p}" for p in problems))
    # The workers read their settings from the environment they inherit from this process: hand them
    # gunicorn's effective forwarded_allow_ips, whichever setting it came from, before any is forked.
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(server.cfg.forwarded_allow_ips)
    _prepare_metrics()
    _import_for_the_workers()
    if _settings.admin_bind and not _settings.admin_token:
        os.environ[ADMIN_SECRET_VARIABLE] = secrets.token_hex(32)  # the page's sessions, alike in every worker


def _import_for_the_workers():
    """Import the application's code here, once, so that the workers forked from this process share its pages
    instead of each building the same objects again (after prometheus-client's directory is set: it is read at
    import). Nothing is built, opened or started: each worker builds its services, connections and threads after
    the fork, as before (wsgi.py). So a SIGHUP's new workers run the code the master loaded: new code needs a
    restart."""
    import app  # noqa: F401  (flask, requests, cryptography, the routes, the services' modules: not the page's)

    gc.collect()  # what the imports let go, before the pages are shared


def pre_fork(server, worker):
    gc.freeze()  # the imports' objects out of the collector's sight, in the workers too: their pages stay shared


def when_ready(server):
    _open_admin(server)


def on_reload(server):
    _open_admin(server, reloading=True)  # a SIGHUP that changed --bind closed every listener, the page's too


def _open_admin(server, reloading=False):
    """ADMIN_BIND: one more listener beside gunicorn's own, whatever --bind says, served by the same workers
    (which tell it apart by its address). Not in gunicorn's bind setting, where a SIGHUP would drop it; found
    again among the listeners after one (this file is read anew). At start, a listener that cannot be opened
    stops the service; after a SIGHUP, Quay's door goes on without the page, and the log says why."""
    if not _settings.admin_bind:
        return
    if any(listener.sock.fileno() != -1 and is_admin_listener(listener.sock.getsockname(), _settings.admin_bind)
           for listener in server.LISTENERS):
        return
    try:
        listener = gunicorn_sockets._sock_type(_settings.admin_bind)(_settings.admin_bind, server.cfg, server.log)
    except OSError as exc:
        problem = f"cannot listen on ADMIN_BIND={admin_address(_settings)}: {exc.strerror}"
        if reloading:
            server.log.error("The operator's page is off until the next reload: %s", problem)
            return
        sys.exit(f"quay-dispatch: {problem}")
    server.LISTENERS.append(listener)
    server.log.info("The operator's page at: %s", listener)


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
