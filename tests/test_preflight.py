"""check-config refuses what the start refuses (issue 34): each configuration that gunicorn's master refuses, run both
ways, the start (a real gunicorn with the project's configuration) and check-config, and refused by both with the
same words, naming the setting."""

from __future__ import annotations

import pytest

from testkit.credentials import GITHUB_TOKEN
from testkit.service import run_flask, run_gunicorn

ACME = {"ACME_DOMAINS": "relay.example.com", "ACME_DIRECTORY": "https://127.0.0.1:14000/dir"}
HEADER = {"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.1"}

# (what is set, the words both say). `pki` stands for the test PKI's files, filled in below.
REFUSED = {
    "no TLS while Quay's certificate is expected": ({}, "CLIENT_CERT_SOURCE=tls needs TLS: set TLS_CERT_FILE"),
    "ACME behind a proxy": (ACME | HEADER, "ACME_DOMAINS needs the service to terminate TLS itself"),
    "ACME and a certificate file": (ACME | {"tls": "server"}, "ACME_DOMAINS and TLS_CERT_FILE are both set"),
    "the page on Quay's port": ({"tls": "server", "PORT": "9443", "ADMIN_BIND": "127.0.0.1:9443"},
                                "ADMIN_BIND=127.0.0.1:9443 is also where the service listens (0.0.0.0:9443)"),
    "a certificate and another key": ({"tls": "mismatched"}, "TLS_CERT_FILE and TLS_KEY_FILE do not match"),
    "no certificate asked": ({"tls": "server", "GUNICORN_CMD_ARGS": "--cert-reqs 0"},
                             "CLIENT_CERT_SOURCE=tls needs --cert-reqs 2 (or 1)"),
    "another worker": ({"tls": "server", "GUNICORN_CMD_ARGS": "--worker-class sync"},
                       "CLIENT_CERT_SOURCE=tls needs --worker-class quay_dispatch.tls_worker.TLSWorker"),
    "a proxy trusted by nobody": ({"CLIENT_CERT_SOURCE": "header"},
                                  "CLIENT_CERT_SOURCE=header needs FORWARDED_ALLOW_IPS (or gunicorn's"),
    "a proxy trusted for everyone": (HEADER | {"FORWARDED_ALLOW_IPS": "*"}, "FORWARDED_ALLOW_IPS"),
    "the header's spellings": (HEADER | {"GUNICORN_CMD_ARGS": "--header-map dangerous"},
                               "CLIENT_CERT_SOURCE=header needs gunicorn's --header-map drop or refuse"),
    "a missing Quay CA": ({"tls": "server", "QUAY_CA_FILE": "/nonexistent/ca.pem"},
                          "QUAY_CA_FILE=/nonexistent/ca.pem does not exist"),
    "an outbox that cannot be opened": ({"tls": "server", "DATABASE_URL": "sqlite:///{tmp}/a-file/o.sqlite3"},
                                        "the outbox (SQLite {tmp}/a-file/o.sqlite3) cannot be opened"),
    "a short incoming token": ({"tls": "server", "INCOMING_TOKEN": "short"}, "INCOMING_TOKEN"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_check_config_refuses_what_the_start_refuses_in_the_same_words(case, test_pki, tmp_path):
    overrides, words = REFUSED[case]
    (tmp_path / "a-file").write_text("not a directory")
    overrides = {name: value.replace("{tmp}", str(tmp_path)) for name, value in overrides.items()}
    words = words.replace("{tmp}", str(tmp_path))
    env = {"PATH": "/usr/bin:/bin", "GITHUB_TOKEN": GITHUB_TOKEN, "ROUTES": "acme/*", "QUAY_CA_FILE": test_pki.ca_file,
           "DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.sqlite3'}"} | overrides
    if tls := env.pop("tls", None):
        cert, key = test_pki.pair("server")
        env |= {"TLS_CERT_FILE": cert, "TLS_KEY_FILE": test_pki.pair("quay")[1] if tls == "mismatched" else key}

    started = run_gunicorn(env)
    checked = run_flask(env, "check-config")

    assert started.returncode != 0 and words in started.stderr, started.stderr
    assert checked.returncode != 0 and words in checked.stderr, checked.stdout + checked.stderr
    assert "Traceback" not in started.stderr + checked.stderr
