"""Shared fixtures: a test PKI, a loopback GitHub, and real gunicorn servers running the service."""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography.x509.oid import ExtendedKeyUsageOID

from quay_dispatch import pki

ROOT = Path(__file__).resolve().parent.parent
GITHUB_TOKEN = "ghp_testtoken0123456789abcdefTESTTOKEN"
LEGACY_GITHUB_TOKEN = "gho_legacy_token_name_value"
INCOMING_TOKEN = "incoming-token-for-tests-0123456789"
# What must never appear in any log line of a test run (checked when the session ends).
SECRETS = (GITHUB_TOKEN, LEGACY_GITHUB_TOKEN, INCOMING_TOKEN, "PRIVATE KEY")
ALL_LOGS: list[Path] = []
ISSUED_TOKENS: list[str] = []  # installation tokens the loopback GitHub issued: never to be logged either


@dataclass
class PKI:
    """Certificates made for the tests, written under `dir`."""

    dir: Path
    paths: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (chain file, key file)
    ca_file: str = ""
    intermediate: pki.Issued | None = None  # to issue more certificates in a test

    def add(self, name: str, leaf: pki.Issued, *chain: pki.Issued) -> None:
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        pki.write_pair(leaf, cert, key, *chain)
        self.paths[name] = (str(cert), str(key))

    def pair(self, name: str) -> tuple[str, str]:
        return self.paths[name]


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log():
    """After the whole run: no token, incoming token or key in any line any service logged."""
    yield
    leaks = [f"{path.name}: {line.strip()[:200]}" for path in ALL_LOGS if path.exists()
             for line in path.read_text(errors="replace").splitlines()
             if any(s in line for s in (*SECRETS, *ISSUED_TOKENS))]
    if leaks:
        pytest.fail("secrets in the logs:\n" + "\n".join(leaks), pytrace=False)


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory) -> PKI:
    """A root and intermediate like a public CA's, Quay's genuine chain, and forgeries of it."""
    store = PKI(tmp_path_factory.mktemp("pki"))
    root = pki.issue("Test Root CA", ca=True, days=3650)
    intermediate = pki.issue("Test Intermediate CA", issuer=root, ca=True, days=3650)
    other_root = pki.issue("Other Root CA", ca=True, days=3650)
    store.intermediate = intermediate
    store.ca_file = str(store.dir / "ca.pem")
    Path(store.ca_file).write_bytes(root.cert_pem)
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    store.add("server", pki.issue("localhost", issuer=intermediate, names=["localhost", "127.0.0.1"]), intermediate)
    # What Quay presents today: serverAuth only, issued through an intermediate.
    store.add("quay", pki.issue("quay.io", issuer=intermediate, names=["quay.io", "*.quay.io"]), intermediate)
    store.add("quay_leaf_only", pki.issue("quay.io", issuer=intermediate, names=["quay.io"]))
    store.add("self_signed", pki.issue("quay.io", names=["quay.io", "*.quay.io"]))
    store.add("other_root", pki.issue("quay.io", issuer=other_root, names=["quay.io"]), other_root)
    store.add("expired", pki.issue("quay.io", issuer=intermediate, names=["quay.io"], not_before=long_ago, days=90),
              intermediate)
    store.add("other_host", pki.issue("evil.example", issuer=intermediate, names=["evil.example"]), intermediate)
    store.add("wildcard_only", pki.issue("*.quay.io", issuer=intermediate, names=["*.quay.io"]), intermediate)
    store.add("client_auth_only", pki.issue("quay.io", issuer=intermediate, names=["quay.io"],
                                            eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), intermediate)
    return store


@dataclass
class Captured:
    """One request the loopback GitHub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the loopback GitHub answered
    at: float = 0.0  # when it arrived (time.time())

    def json(self):
        return json.loads(self.body)


class FakeApp:
    """The GitHub App side of the loopback GitHub: checks JWTs with the App's public key, issues tokens.

    Tokens claim to last `claimed_ttl` seconds, but each one works for `uses` requests
    only (None: any number), as a token revoked or expired early would.
    """

    def __init__(self, app_id: str, public_key, installations: dict[str, int], permissions: dict | None = None,
                 claimed_ttl: int = 3600, uses: int | None = None):
        self.app_id, self.public_key, self.installations = app_id, public_key, installations
        self.permissions = permissions or {"contents": "write", "actions": "write", "metadata": "read"}
        self.claimed_ttl, self.uses = claimed_ttl, uses
        self.tokens: dict[str, list] = {}  # token -> [installation, uses left]

    def jwt_problem(self, authorization: str) -> str | None:
        """Why the bearer is not a JWT of this App, as GitHub would check it; None when it is."""
        import jwt

        try:
            claims = jwt.decode(authorization.removeprefix("Bearer "), self.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"]})
        except jwt.PyJWTError as exc:
            return f"A JSON web token could not be decoded: {exc}"
        if str(claims["iss"]) != self.app_id:
            return "'Issuer' claim ('iss') must be an Integer"
        if claims["exp"] - time.time() > 600 or claims["iat"] > time.time():
            return "'Expiration time' claim ('exp') is too far in the future"
        return None

    def handle(self, method: str, path: str, authorization: str) -> tuple[int, dict | list] | None:
        """The answer to an App endpoint, a 401 for a bad installation token, or None to go on."""
        if match := re.fullmatch(r"/app/installations/(\d+)/access_tokens", path):
            if problem := self.jwt_problem(authorization):
                return 401, {"message": problem}
            if int(match[1]) not in self.installations.values():
                return 404, {"message": "Not Found"}
            token = "ghs_" + secrets.token_urlsafe(random.randint(16, 60))  # no fixed length
            self.tokens[token] = [int(match[1]), self.uses]
            ISSUED_TOKENS.append(token)
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.claimed_ttl)
            return 201, {"token": token, "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if path == "/app" or path.startswith("/app/installations?"):
            if problem := self.jwt_problem(authorization):
                return 401, {"message": problem}
            if path == "/app":
                return 200, {"id": int(self.app_id), "slug": "quay-dispatch-test", "name": "Quay dispatch (test)"}
            return 200, [{"id": installation, "account": {"login": repo.partition("/")[0]}}
                         for repo, installation in sorted(self.installations.items())]
        if match := re.fullmatch(r"/repos/([^/]+/[^/]+)/installation", path):
            if problem := self.jwt_problem(authorization):
                return 401, {"message": problem}
            if match[1] not in self.installations:
                return 404, {"message": "Not Found"}
            return 200, {"id": self.installations[match[1]], "permissions": self.permissions}
        repo = re.match(r"/repos/([^/]+/[^/]+)", path)
        entry = self.tokens.get(authorization.removeprefix("Bearer "))
        if repo is None or entry is None or entry[1] == 0 or self.installations.get(repo[1]) != entry[0]:
            return 401, {"message": "Bad credentials"}
        if entry[1] is not None:
            entry[1] -= 1
        return None


class FakeGitHub:
    """A loopback HTTP server standing in for GitHub's REST API; answers follow a script.

    POSTs get the scripted answers, then 204; GET /repos/{owner}/{repo} answers from
    `repos`. With `app` set, GitHub App endpoints work and other requests need an
    installation token. `prefix` ("/api/v3") and `tls` (a certificate pair) make it a
    GitHub Enterprise Server.
    """

    def __init__(self, prefix: str = "", tls: tuple[str, str] | None = None):
        self.requests: list[Captured] = []
        self.script: list[tuple[int, dict, bytes]] = []
        self.repos: dict[str, tuple[int, dict]] = {}  # "owner/name" -> answer to GET /repos/owner/name
        self.scopes: str | None = "repo, workflow"  # X-OAuth-Scopes of GET /user (None: a fine-grained token)
        self.app: FakeApp | None = None
        self.prefix = prefix
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self._serve("POST")

            def do_GET(self):
                self._serve("GET")

            def _serve(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    status, headers, payload = fake._answer(method, self.path, self.headers.get("Authorization", ""))
                    fake.requests.append(
                        Captured(method, self.path, dict(self.headers.items()), body, status, time.time()))
                try:
                    time.sleep(fake.delay)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                self.send_response(status)
                headers = {"X-GitHub-Request-Id": f"REQ{len(fake.requests)}", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}{prefix}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _answer(self, method: str, raw_path: str, authorization: str) -> tuple[int, dict, bytes]:
        def as_json(status, body):
            return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

        if not raw_path.startswith(self.prefix):
            return as_json(404, {"message": "Not Found"})
        path = raw_path[len(self.prefix):]
        if self.app and (answer := self.app.handle(method, path, authorization)) is not None:
            return as_json(*answer)
        if method == "GET" and path == "/user":
            if authorization not in (f"Bearer {GITHUB_TOKEN}", f"Bearer {LEGACY_GITHUB_TOKEN}"):
                return as_json(401, {"message": "Bad credentials"})
            status, headers, payload = as_json(200, {"login": "relay-bot"})
            return status, headers | ({} if self.scopes is None else {"X-OAuth-Scopes": self.scopes}), payload
        if method == "GET":
            return as_json(*self.repos.get(path.removeprefix("/repos/"), (404, {"message": "Not Found"})))
        return self.script.pop(0) if self.script else (204, {}, b"")

    def dispatches(self) -> list[Captured]:
        """The dispatch requests received (repository_dispatch and workflow_dispatch), in order."""
        return [r for r in list(self.requests) if r.method == "POST" and r.path.endswith("/dispatches")]

    def dispatched_builds(self) -> list[str]:
        """The Quay build_id of each repository_dispatch received, in order."""
        return [body["client_payload"]["build_id"] for body in (r.json() for r in self.dispatches())
                if "client_payload" in body]

    def answer(self, status: int, body: dict | None = None, headers: dict | None = None, times: int = 1):
        """Queue `times` answers of `status` before the default 204."""
        payload = json.dumps(body).encode() if body is not None else b""
        self.script.extend([(status, {"Content-Type": "application/json", **(headers or {})}, payload)] * times)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Captured]:
        """The requests received, once there are `count` of them (or `timeout` has passed)."""
        wait_until(lambda: len(self.requests) >= count, timeout, interval=0.02)
        return list(self.requests)

    def reset(self):
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.repos.clear()
            self.scopes = "repo, workflow"
            self.app = None
            self.delay = 0.0
            self.max_in_flight = 0

    def close(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def github():
    server = FakeGitHub()
    yield server
    server.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Whether `predicate()` comes true within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_for_readyz(url: str, cert: tuple[str, str] | None, verify: str | bool, exited, log,
                    timeout: float = 20.0) -> None:
    """Until GET url/readyz answers 200; fails at once when `exited()` says why (the process is gone).

    `log()` is the process's output, for the failure's message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if why := exited():
            raise AssertionError(f"{why}:\n{log()}")
        try:
            if requests.get(url + "/readyz", cert=cert, verify=verify, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/readyz did not answer 200 in {timeout} s:\n{log()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A real gunicorn running the service on loopback, its log in a file."""

    def __init__(self, env: dict[str, str], args: list[str], workdir: Path, tls: bool = True):
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        ALL_LOGS.append(self.log_path)
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.env = env
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{self.port}", *args, "wsgi:app"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, cert: tuple[str, str] | None, verify: str | bool, timeout: float = 20.0) -> None:
        def exited():
            return None if self.proc.poll() is None else f"gunicorn exited with {self.proc.returncode}"
        wait_for_readyz(self.url, cert, verify, exited, self.log, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def base_env(test_pki: PKI, github: FakeGitHub, database_url: str) -> dict[str, str]:
    """The environment of a service that trusts the test PKI and sends to the loopback GitHub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GH_", "QUAY_", "ROUTES", "DRY_RUN"))}
    server_cert, server_key = test_pki.pair("server")
    env.update({
        "TLS_CERT_FILE": server_cert,
        "TLS_KEY_FILE": server_key,
        "QUAY_CA_FILE": test_pki.ca_file,
        "GITHUB_API_URL": github.url,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "ROUTES": "acme/*; acme/api=acme-gh/api-server",
        "DATABASE_URL": database_url,
        "PYTHONUNBUFFERED": "1",
    })
    return env


class Services:
    """Starts services in one directory and stops them all at the end."""

    def __init__(self, workdir: Path, test_pki: PKI, github: FakeGitHub, database_url: str):
        self.workdir, self.pki, self.github, self.database_url = workdir, test_pki, github, database_url
        self.started: list[Service] = []

    def __call__(self, overrides: dict[str, str | None] | None = None, args: list[str] | None = None,
                 wait: bool = True) -> Service:
        env = base_env(self.pki, self.github, self.database_url)
        for name, value in (overrides or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        tls = bool(env.get("TLS_CERT_FILE") or env.get("CRT"))
        service = Service(env, args or ["--workers", "1"], self.workdir, tls=tls)
        self.started.append(service)
        if wait:
            service.wait_ready(self.pki.pair("server") if service.scheme == "https" else None, self.pki.ca_file)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop()


def find_initdb() -> str | None:
    return shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)


@contextlib.contextmanager
def private_postgresql(initdb: str):
    """Start a throw-away PostgreSQL server on a loopback port; yield its URL; remove it after."""
    bindir = Path(initdb).resolve().parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # Not under pytest's tmp_path: that is private to root, and PostgreSQL refuses to run as root.
    home = Path(tempfile.mkdtemp(prefix="quay-dispatch-pg-"))
    if as_postgres:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new, empty database on the server, as a URL."""
    import psycopg

    name = f"outbox_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgresql_server():
    """A PostgreSQL server for the session: QUAY_TEST_POSTGRESQL_URL's, else a private one started here."""
    url = os.environ.get("QUAY_TEST_POSTGRESQL_URL")
    if url:
        yield url
        return
    initdb = find_initdb()
    if not initdb:
        message = "PostgreSQL is not installed: `make test` installs it with apt-get when run as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
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
def start_service(tmp_path, test_pki, github, database_url):
    """Start a service for one test: start_service(env_overrides, args)."""
    github.reset()
    services = Services(tmp_path, test_pki, github, database_url)
    yield services
    services.stop_all()


@pytest.fixture(scope="module")
def relay(tmp_path_factory, test_pki, github, backend, request):
    """One service (2 workers) shared by a module's tests, with the default test configuration."""
    workdir = tmp_path_factory.mktemp("relay")
    services = Services(workdir, test_pki, github, new_database(backend, request, workdir))
    service = services(args=["--workers", "2"])
    yield service
    services.stop_all()
