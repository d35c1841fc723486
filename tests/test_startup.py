"""Configuration: read once, validated, and insecure combinations refused with what to set."""

import subprocess
import sys

import pytest

from quay_dispatch.config import ConfigError, load_settings
from tests.conftest import GITHUB_TOKEN, ROOT

VALID = {"GITHUB_TOKEN": GITHUB_TOKEN, "ROUTES": "acme/*"}


def problems(env):
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    return str(raised.value)


def test_defaults():
    settings = load_settings(VALID)

    assert settings.github_api_url == "https://api.github.com"
    assert settings.quay_hostnames == ("quay.io",)
    assert settings.client_cert_source == "tls"
    assert settings.database_url == "sqlite:///var/quay-dispatch.sqlite3"
    assert settings.delivery_max_age == 24 * 3600
    assert settings.port == 8443


def test_every_problem_is_listed_at_once():
    message = problems({"CLIENT_CERT_SOURCE": "none", "PORT": "http", "DRY_RUN": "maybe"})

    assert "no GitHub credentials: set GITHUB_TOKEN (or GH_TOKEN) or a GitHub App" in message
    assert "no routes: set ROUTES" in message
    assert "CLIENT_CERT_SOURCE=none without INCOMING_TOKEN would let anyone trigger your workflows" in message
    assert "PORT='http' is not a TCP port number" in message
    assert "DRY_RUN='maybe' is not a boolean" in message


def test_short_incoming_token_is_refused_without_repeating_it():
    message = problems(VALID | {"INCOMING_TOKEN": "short-secret"})

    assert "INCOMING_TOKEN is too short (12 characters)" in message
    assert "short-secret" not in message


def test_database_url_with_a_password_is_not_repeated():
    message = problems(VALID | {"DATABASE_URL": "mysql://user:hunter2@db/x"})

    assert "hunter2" not in message


def test_settings_repr_reveals_no_secret():
    settings = load_settings(VALID | {"INCOMING_TOKEN": "x" * 30})

    assert GITHUB_TOKEN not in repr(settings) and "x" * 30 not in repr(settings)


@pytest.mark.parametrize("duration, seconds", [("3600", 3600), ("90m", 5400), ("24h", 86400), ("2d", 172800)])
def test_delivery_max_age_durations(duration, seconds):
    assert load_settings(VALID | {"DELIVERY_MAX_AGE": duration}).delivery_max_age == seconds


def run_gunicorn(env_overrides, *args):
    env = {"PATH": "/usr/bin:/bin", **VALID, "DATABASE_URL": "sqlite:////tmp/unused.sqlite3", **env_overrides}
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *args, "wsgi:app"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_gunicorn_refuses_client_certificates_without_tls():
    result = run_gunicorn({})

    assert result.returncode != 0
    assert "CLIENT_CERT_SOURCE=tls needs TLS: set TLS_CERT_FILE and TLS_KEY_FILE" in result.stderr


def test_gunicorn_refuses_cert_reqs_0_in_tls_mode(test_pki):
    cert, key = test_pki.pair("server")
    result = run_gunicorn({"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key}, "--cert-reqs", "0")

    assert result.returncode != 0
    assert "needs --cert-reqs 2 (or 1)" in result.stderr


def test_gunicorn_refuses_an_open_relay():
    result = run_gunicorn({"CLIENT_CERT_SOURCE": "none"})

    assert result.returncode != 0
    assert "would let anyone trigger your workflows" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("database_url, words", [
    ("postgresql://quay:hunter2@127.0.0.1:1/outbox", "the outbox (PostgreSQL) cannot be opened"),
    ("sqlite:////proc/no-such-dir/outbox.sqlite3", "the outbox (SQLite /proc/no-such-dir/outbox.sqlite3) cannot be"),
])
def test_gunicorn_refuses_an_outbox_it_cannot_open_in_one_message(test_pki, database_url, words):
    cert, key = test_pki.pair("server")
    result = run_gunicorn({"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "DATABASE_URL": database_url})

    assert result.returncode != 0
    assert words in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
