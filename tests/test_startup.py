"""Configuration: read once, validated, and insecure combinations refused with what to set."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from quay_dispatch.config import ConfigError, load_settings
from testkit.credentials import GITHUB_TOKEN
from testkit.faults import silent_listener
from testkit.service import run_flask, run_gunicorn

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


def test_an_app_key_that_is_not_rsa_is_one_problem_not_two(tmp_path):
    key = tmp_path / "app.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))

    message = problems({"ROUTES": "acme/*", "GITHUB_APP_ID": "1", "GITHUB_APP_PRIVATE_KEY_FILE": str(key)})

    assert message.splitlines()[1:] == [
        "  - the GitHub App private key must be an RSA key (GitHub signs App JWTs with RS256)"]


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
    ("postgresql://quay:hunter2@127.0.0.1:1/outbox", "the outbox (PostgreSQL at 127.0.0.1:1) cannot be opened: "
                                                     "cannot connect: "),
    ("sqlite:////proc/no-such-dir/outbox.sqlite3", "the outbox (SQLite /proc/no-such-dir/outbox.sqlite3) cannot be"),
])
def test_gunicorn_refuses_an_outbox_it_cannot_open_in_one_message(test_pki, database_url, words):
    cert, key = test_pki.pair("server")
    result = run_gunicorn({"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "DATABASE_URL": database_url})

    assert result.returncode != 0
    assert words in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_a_database_that_never_answers_stops_the_start_within_seconds_saying_so(test_pki):
    cert, key = test_pki.pair("server")
    with silent_listener() as port:
        started = time.monotonic()
        result = run_gunicorn({"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
                               "DATABASE_URL": f"postgresql://quay:hunter2@127.0.0.1:{port}/outbox"})
        elapsed = time.monotonic() - started

    outbox = f"PostgreSQL at 127.0.0.1:{port}"
    assert result.returncode != 0
    assert f"opening the outbox ({outbox}): 5 s at most to connect" in result.stderr  # said before the wait
    assert f"  - the outbox ({outbox}) cannot be opened: no answer within 5 s while connecting" in result.stderr
    assert elapsed < 15
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_check_config_refuses_a_database_that_never_answers_within_seconds_as_the_start_does():
    with silent_listener() as port:
        started = time.monotonic()
        result = run_flask(VALID | {"PATH": os.environ["PATH"], "DRY_RUN": "1",
                                    "DATABASE_URL": f"postgresql://quay:hunter2@127.0.0.1:{port}/outbox"},
                           "check-config")
        elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert (f"  - the outbox (PostgreSQL at 127.0.0.1:{port}) cannot be opened: no answer within 5 s while connecting"
            in result.stderr)
    assert elapsed < 15
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize("hostnames, reason", [
    ("*.quay.io,quay.io", "QUAY_HOSTNAME='*.quay.io': a wildcard is not allowed"),
    ("192.0.2.10", "QUAY_HOSTNAME='192.0.2.10': an IP address is not allowed"),
    ("quay..io", "QUAY_HOSTNAME='quay..io': not a valid host name"),
    ("-quay.io", "QUAY_HOSTNAME='-quay.io': not a valid host name"),
    ("quay_io.example", "QUAY_HOSTNAME='quay_io.example': not a valid host name"),
])
def test_quay_hostname_that_no_certificate_check_can_use_is_refused(hostnames, reason):
    assert reason in problems(VALID | {"QUAY_HOSTNAME": hostnames})


def test_quay_hostname_wildcard_stops_gunicorn_at_start():
    result = run_gunicorn({"QUAY_HOSTNAME": "*.quay.io,quay.io"})

    assert result.returncode != 0
    assert "QUAY_HOSTNAME='*.quay.io': a wildcard is not allowed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["http://github.example.com/api/v3", "http://10.0.0.5"])
def test_plain_http_github_api_url_is_refused_unless_allowed(url):
    message = problems(VALID | {"GITHUB_API_URL": url})

    assert f"GITHUB_API_URL={url!r} is plain http: the GitHub token would cross the network in clear text" in message
    assert load_settings(VALID | {"GITHUB_API_URL": url, "GITHUB_API_ALLOW_HTTP": "1"}).github_api_url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"])
def test_plain_http_github_api_url_on_loopback_is_allowed(url):
    assert load_settings(VALID | {"GITHUB_API_URL": url}).github_api_url == url


def test_metrics_directory_that_holds_the_outbox_is_refused_and_the_outbox_kept(tmp_path):
    outbox = tmp_path / "outbox.sqlite3"
    outbox.write_bytes(b"an outbox with an accepted delivery in it")

    result = run_gunicorn({"DATABASE_URL": f"sqlite:///{outbox}", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})

    assert result.returncode != 0
    assert f"PROMETHEUS_MULTIPROC_DIR={tmp_path}: it holds the outbox ({outbox})" in result.stderr
    assert outbox.read_bytes() == b"an outbox with an accepted delivery in it"


def test_a_restart_deletes_only_the_metric_files_it_made(start_service, tmp_path):
    metrics = tmp_path / "shared"
    metrics.mkdir()
    theirs = {"notes.txt": b"not ours", "counter_backup.db": b"not prometheus-client's name", "sub/x.db": b"kept"}
    for name, data in theirs.items():
        (metrics / name).parent.mkdir(exist_ok=True)
        (metrics / name).write_bytes(data)
    (metrics / "counter_999999.db").write_bytes(b"a previous run's samples")

    start_service({"PROMETHEUS_MULTIPROC_DIR": str(metrics)}).stop()
    start_service({"PROMETHEUS_MULTIPROC_DIR": str(metrics)}).stop()

    assert {name: (metrics / name).read_bytes() for name in theirs} == theirs
    assert not (metrics / "counter_999999.db").exists()


NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


def refused_with(result, message):
    assert result.returncode != 0
    assert f"  - {message}\n" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "OpenSSL" not in result.stderr


@pytest.fixture
def files(test_pki):
    """Good TLS and CA files, by setting name: each test spoils one."""
    cert, key = test_pki.pair("server")
    return {"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "QUAY_CA_FILE": test_pki.ca_file}


def file_env(files, setting, path):
    """The environment in which `setting` names `path` and every other file is good."""
    if setting == "ROUTES_FILE":
        return files | {"ROUTES": "", "ROUTES_FILE": path}
    if setting == "GITHUB_APP_PRIVATE_KEY_FILE":
        return files | {"GITHUB_TOKEN": "", "GITHUB_APP_ID": "12345", setting: path}
    return files | {setting: path}


@pytest.mark.parametrize("setting", ["TLS_CERT_FILE", "TLS_KEY_FILE", "QUAY_CA_FILE", "QUAY_INTERMEDIATES_FILE",
                                     "ROUTES_FILE", "GITHUB_APP_PRIVATE_KEY_FILE"])
def test_a_missing_file_stops_the_start_naming_its_setting_and_path(files, tmp_path, setting):
    missing = tmp_path / "no-such.pem"

    result = run_gunicorn(file_env(files, setting, str(missing)))

    refused_with(result, f"{setting}={missing} does not exist")


@pytest.fixture
def readable_only_by_root(test_pki):
    """The server's pair in a directory anyone may enter, the key readable by its owner (root) alone."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the file is made unreadable to another uid, and the service run as that uid")
    # On this machine subprocess's user= fails to exec the interpreter (EACCES); setpriv does not.
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's setpriv to run the service as another uid")
    directory = Path(tempfile.mkdtemp(prefix="quay-dispatch-perm-"))
    directory.chmod(0o755)
    cert, key = test_pki.pair("server")
    shutil.copy(cert, directory / "server.pem")
    shutil.copy(key, directory / "server.key")
    (directory / "server.pem").chmod(0o644)
    (directory / "server.key").chmod(0o600)
    yield str(directory / "server.pem"), str(directory / "server.key")
    shutil.rmtree(directory)


@pytest.mark.parametrize("env_name, args", [("TLS_KEY_FILE", False), ("--keyfile", True)])
def test_an_unreadable_key_stops_the_start_with_the_uid_that_cannot_read_it(readable_only_by_root, test_pki,
                                                                          installed_copy, env_name, args):
    cert, key = readable_only_by_root
    env = {"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "QUAY_CA_FILE": test_pki.ca_file}
    flags = ["--keyfile", key] if args else []
    if args:
        env["TLS_KEY_FILE"] = test_pki.pair("server")[1]  # the flag wins over the environment

    result = run_gunicorn(env, *flags, run_as=AS_NOBODY, root=installed_copy.app, python=installed_copy.python)

    refused_with(result, f"{env_name}={key} cannot be read: permission denied (the service runs as uid {NOBODY})")


def test_a_certificate_and_key_that_do_not_match_stop_the_start(test_pki):
    cert, _ = test_pki.pair("server")
    _, other_key = test_pki.pair("quay")

    result = run_gunicorn({"TLS_CERT_FILE": cert, "TLS_KEY_FILE": other_key, "QUAY_CA_FILE": test_pki.ca_file})

    refused_with(result, f"TLS_CERT_FILE and TLS_KEY_FILE do not match: the certificate in {cert} "
                         f"is not for the key in {other_key}")


@pytest.mark.parametrize("setting", ["TLS_CERT_FILE", "QUAY_CA_FILE", "QUAY_INTERMEDIATES_FILE"])
def test_a_file_that_is_not_a_pem_certificate_stops_the_start(files, tmp_path, setting):
    not_pem = tmp_path / "server.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a not a certificate")

    result = run_gunicorn(file_env(files, setting, str(not_pem)))

    refused_with(result, f"{setting}={not_pem} is not a PEM certificate")


@pytest.mark.parametrize("setting", ["TLS_KEY_FILE", "GITHUB_APP_PRIVATE_KEY_FILE"])
def test_a_key_file_that_holds_a_certificate_stops_the_start(files, test_pki, setting):
    cert, _ = test_pki.pair("server")

    result = run_gunicorn(file_env(files, setting, cert))

    expected = "is not a PEM private key" if setting == "TLS_KEY_FILE" else "is not an unencrypted PEM private key"
    refused_with(result, f"{setting}={cert} {expected}")
