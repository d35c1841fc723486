"""ACME's settings, checked at start-up, and what a service without ACME pays for it: nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from quay_dispatch.config import ConfigError, load_settings
from testkit.service import ROOT, run_gunicorn

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


def test_a_service_without_acme_the_page_or_quay_side_loads_none_of_them(test_pki, tmp_path):
    cert, key = test_pki.pair("server")
    env = {"PATH": os.environ["PATH"], "GITHUB_TOKEN": "x" * 40, "ROUTES": "acme/*", "TLS_CERT_FILE": cert,
           "TLS_KEY_FILE": key, "DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.sqlite3'}"}
    probe = "import sys, wsgi; print(sorted(m for m in sys.modules if m.split('.')[0] in ('acme', 'josepy', " \
            "'flask_wtf', 'wtforms') or m.startswith(('quay_dispatch.acme', 'quay_dispatch.admin', " \
            "'quay_dispatch.quay_side'))))"

    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)

    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
