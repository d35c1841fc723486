"""Shared fixtures: a test PKI, a loopback GitHub, and real gunicorn servers running the service.

What they are made of lives in testkit/, which the benchmarks use too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from quay_dispatch.outbox import open_outbox
from testkit.credentials import leaks
from testkit.deploy import Installed, install_copy
from testkit.github import FakeGitHub
from testkit.pebble import Pebble, pebble_missing
from testkit.pki import PKI, make_pki
from testkit.postgres import create_database, find_initdb, private_postgresql
from testkit.quay_api import FakeQuay
from testkit.service import ServiceStarter, require

# Fixtures that start a real server: a test that uses one is marked `server`; `make check` runs the others.
SERVER_FIXTURES = {"start_service", "relay", "postgresql_server", "pebble_at", "browser", "installed_copy", "podman",
                   "deployment", "proxied"}


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgresql = callspec is not None and callspec.params.get("backend") == "postgresql"
        if on_postgresql or SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log():
    """After the whole run: no token, incoming token or key in any line any service logged."""
    yield
    found = leaks()
    if found:
        pytest.fail("secrets in the logs:\n" + "\n".join(found), pytrace=False)


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory) -> PKI:
    """A root and intermediate like a public CA's, Quay's genuine chain, and forgeries of it (testkit.pki)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def github():
    server = FakeGitHub()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgresql_server():
    """A PostgreSQL server for the session: QUAY_TEST_POSTGRESQL_URL's, else a private one started here."""
    url = os.environ.get("QUAY_TEST_POSTGRESQL_URL")
    if url:
        yield url
        return
    initdb = find_initdb()
    if not initdb:
        require("PostgreSQL is not installed: `make test` installs it with apt-get when run as root")
    with private_postgresql(initdb) as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request) -> str:
    """The outbox's database: every test that stores events runs against both."""
    return request.param


def new_database(backend: str, request, directory: Path) -> str:
    """A fresh, empty outbox database of `backend`, as a DATABASE_URL."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'outbox.sqlite3'}"
    return create_database(request.getfixturevalue("postgresql_server"))


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    return new_database(backend, request, tmp_path)


@pytest.fixture
def box(database_url):
    """The test's outbox, schema up to date, opened as the service opens it."""
    outbox = open_outbox(database_url)
    outbox.migrate()
    return outbox


@pytest.fixture
def start_service(tmp_path, test_pki, github, database_url):
    """Start a service for one test: start_service(env_overrides, args)."""
    github.reset()
    services = ServiceStarter(tmp_path, test_pki, github, database_url)
    yield services
    services.stop_all()


@pytest.fixture(scope="module")
def relay(tmp_path_factory, test_pki, github, backend, request):
    """One service (2 workers) shared by a module's tests, with the default test configuration."""
    workdir = tmp_path_factory.mktemp("relay")
    services = ServiceStarter(workdir, test_pki, github, new_database(backend, request, workdir))
    service = services(args=["--workers", "2"])
    yield service
    services.stop_all()


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    """A GitHub App's private key (testkit.credentials.as_app), one per test module."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def installed_copy() -> Installed:
    """The image's files and a venv in a directory anyone may enter, for the tests that run the service as
    another user: the checkout itself may be in /root (testkit.deploy.install_copy)."""
    root = Path(tempfile.mkdtemp(prefix="quay-dispatch-installed-"))
    try:
        yield install_copy(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def quay(test_pki):
    """A loopback Quay (API and sender, testkit.quay_api) that presents the test PKI's Quay certificate and retries
    every 0.2 s; tests add its repositories."""
    fake = FakeQuay(cert=test_pki.pair("quay"), verify=test_pki.ca_file, retry_interval=0.2)
    yield fake
    fake.close()


@pytest.fixture
def pebble_at(tmp_path, test_pki):
    """pebble_at(port): a pebble whose validator connects to `port` for tls-alpn-01; stopped after the test."""
    require(pebble_missing())
    started = []

    def start(port: int, nonce_reject: int = 0, eab: dict[str, str] | None = None) -> Pebble:
        cert, key = test_pki.pair("server")
        started.append(Pebble(tmp_path, cert, key, test_pki.ca_file, port, nonce_reject, eab))
        return started[-1]

    yield start
    for pebble in started:
        pebble.stop()
