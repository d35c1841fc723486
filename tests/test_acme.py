"""Certificates from ACME, end to end: a real gunicorn with the TLS worker orders from Debian's pebble (Let's Encrypt's
test CA), answers its tls-alpn-01 validation on its own port, and serves what it got."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time

import pytest
import requests
from cryptography import x509

from quay_dispatch.acme import state
from quay_dispatch.config import ConfigError, load_settings
from quay_dispatch.outbox import open_outbox
from quay_dispatch.sample import sample_body
from testkit.pebble import DOMAIN, Pebble, pebble_missing, session_for
from testkit.service import ROOT, free_port, run_gunicorn, wait_until


@pytest.fixture
def pebble_at(tmp_path, test_pki):
    """pebble(port): a pebble whose validator connects to `port` for tls-alpn-01; stopped after the test."""
    if why := pebble_missing():
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    started = []

    def start(port: int, nonce_reject: int = 0) -> Pebble:
        cert, key = test_pki.pair("server")
        started.append(Pebble(tmp_path, cert, key, test_pki.ca_file, port, nonce_reject))
        return started[-1]

    yield start
    for pebble in started:
        pebble.stop()


def acme_env(pebble: Pebble) -> dict[str, str | None]:
    return {"TLS_CERT_FILE": None, "TLS_KEY_FILE": None, "ACME_DOMAINS": DOMAIN, "ACME_DIRECTORY": pebble.directory,
            "ACME_CA_FILE": pebble.ca_file, "ACME_EMAIL": "ops@example.test"}


def served_certificate(port: int) -> x509.Certificate:
    """The certificate a client that asks for DOMAIN gets on `port` (no verification, client certificate none)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=DOMAIN) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def issued_by_pebble(port: int) -> bool:
    try:
        return "Pebble" in served_certificate(port).issuer.rfc4514_string()
    except (OSError, ssl.SSLError):  # refused for want of a client certificate, after the certificate was seen
        return False


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_first_start_serves_at_once_then_pebbles_certificate_and_relays_quays_call(start_service, pebble_at,
                                                                                  database_url, test_pki, github,
                                                                                  tmp_path):
    port = free_port()
    pebble = pebble_at(port)
    # Hold the order lease for a few seconds, as another replica ordering would: the wait is then certain.
    store = open_outbox(database_url)
    store.migrate()
    assert store.lock(state.ORDER_LEASE, "another replica", 3)
    started = time.monotonic()
    service = start_service(acme_env(pebble), port=port, wait=False)

    assert wait_until(lambda: _status(service, "/healthz", test_pki) == 200, timeout=20), service.log()
    readyz = requests.get(service.url + "/readyz", cert=test_pki.pair("quay"), verify=False, timeout=5)
    assert readyz.status_code == 503
    assert "waiting for a certificate from ACME" in " ".join(readyz.json()["reasons"])
    assert wait_until(lambda: issued_by_pebble(port), timeout=30), service.log()
    issued_after = time.monotonic() - started

    root = tmp_path / "pebble-root.pem"
    root.write_text(pebble.root_pem())
    response = session_for(DOMAIN).post(f"https://127.0.0.1:{port}/incoming",
                                        data=json.dumps(sample_body("build_success", "acme/widget")),
                                        headers={"Content-Type": "application/json"},
                                        cert=test_pki.pair("quay"), verify=str(root), timeout=10)
    assert response.status_code == 202, response.text
    assert [r.path for r in github.wait_for(1)] == ["/repos/acme/widget/dispatches"]
    assert _status(service, "/readyz", test_pki) == 200
    assert pebble.orders() == 1
    assert "ACME: certificate issued, serial" in service.log()
    print(f"first start to pebble's certificate: {issued_after:.1f} s (3 s of it the lease held)")


def _status(service, path: str, test_pki) -> int | None:
    try:
        return requests.get(service.url + path, cert=test_pki.pair("quay"), verify=False, timeout=5).status_code
    except requests.RequestException:
        return None


ACME_VALID = {"GITHUB_TOKEN": "x" * 40, "ROUTES": "acme/*", "ACME_DOMAINS": "relay.example.com"}


@pytest.mark.parametrize("overrides, words", [
    ({"ACME_DOMAINS": "*.example.com"}, "ACME_DOMAINS='*.example.com': a wildcard is not allowed: tls-alpn-01"),
    ({"ACME_DOMAINS": "relay.example.com,192.0.2.7"}, "ACME_DOMAINS='192.0.2.7': an IP address is not allowed"),
    ({"ACME_DOMAINS": "relay_1.example.com"}, "ACME_DOMAINS='relay_1.example.com': not a valid host name"),
    ({"ACME_DIRECTORY": "http://acme.example.com/dir"}, "ACME_DIRECTORY='http://acme.example.com/dir' is plain http"),
    ({"ACME_DIRECTORY": "letsencrypt-nightly"}, "ACME_DIRECTORY='letsencrypt-nightly': use letsencrypt,"),
    ({"ACME_EAB_KID": "kid-1"}, "external account binding needs both ACME_EAB_KID and ACME_EAB_HMAC_KEY"),
    ({"ACME_DOMAINS": None, "ACME_EMAIL": "ops@example.com"}, "ACME_EMAIL set without ACME_DOMAINS"),
])
def test_acme_settings_that_cannot_work_are_refused_naming_the_setting(overrides, words):
    env = {k: v for k, v in (ACME_VALID | overrides).items() if v is not None}
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings(env)


def test_acme_directory_names_and_loopback_http_are_accepted():
    assert load_settings(ACME_VALID).acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    staging = load_settings(ACME_VALID | {"ACME_DIRECTORY": "letsencrypt-staging"})
    assert staging.acme_directory == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert load_settings(ACME_VALID | {"ACME_DIRECTORY": "http://127.0.0.1:14000/dir"}).acme_domains == (
        "relay.example.com",)


@pytest.mark.parametrize("overrides, args, words", [
    ({"TLS_CERT_FILE": "server"}, [], "ACME_DOMAINS and TLS_CERT_FILE are both set"),
    ({}, ["--certfile", "server"], "ACME_DOMAINS and --certfile are both set"),
    ({"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.1"}, [],
     "ACME_DOMAINS needs the service to terminate TLS itself (CLIENT_CERT_SOURCE=tls): with CLIENT_CERT_SOURCE=header"),
    ({"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": "t" * 32}, [],
     "ACME_DOMAINS needs the service to terminate TLS itself (CLIENT_CERT_SOURCE=tls): with CLIENT_CERT_SOURCE=none"),
])
def test_acme_where_the_certificate_comes_from_elsewhere_stops_the_start(test_pki, overrides, args, words):
    cert, key = test_pki.pair("server")
    overrides = {name: cert if value == "server" else value for name, value in overrides.items()}
    args = [cert if arg == "server" else arg for arg in args]
    if args:
        args += ["--keyfile", key]
    if "TLS_CERT_FILE" in overrides:
        overrides["TLS_KEY_FILE"] = key

    result = run_gunicorn(ACME_VALID | overrides, *args)

    assert result.returncode != 0
    assert f"  - {words}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_service_without_acme_loads_none_of_it(test_pki, tmp_path):
    cert, key = test_pki.pair("server")
    env = {"PATH": os.environ["PATH"], "GITHUB_TOKEN": "x" * 40, "ROUTES": "acme/*", "TLS_CERT_FILE": cert,
           "TLS_KEY_FILE": key, "DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.sqlite3'}"}
    probe = "import sys, wsgi; print(sorted(m for m in sys.modules if m.split('.')[0] in ('acme', 'josepy') " \
            "or m.startswith('quay_dispatch.acme')))"

    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)

    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
