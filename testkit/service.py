"""Real gunicorn processes running the service on loopback, and its command line, as operators run them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from testkit.credentials import ALL_LOGS, GITHUB_TOKEN

if TYPE_CHECKING:
    from testkit.github import FakeGitHub
    from testkit.pki import PKI

ROOT = Path(__file__).resolve().parent.parent


def require(missing: str | None) -> None:
    """A program the test runs is `missing` (why, and what installs it): skip the test, or fail it under CI,
    where `make test` installs every program and a skip would hide that it did not."""
    if missing is None:
        return
    import pytest  # here: the benchmarks use this module too

    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


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
    return free_ports(1)[0]


def free_ports(count: int, taken: tuple[int, ...] = ()) -> list[int]:
    """`count` different free ports, none of `taken`. Each is held open until all are chosen: asked one at a time,
    the kernel may give the same port twice."""
    held, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] not in taken:
                ports.append(sock.getsockname()[1])
        return ports
    finally:
        for sock in held:
            sock.close()


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM to `proc`'s session (started with start_new_session), then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


class LoggedProcess:
    """A program a test starts, in a session of its own (it and its children stop together), its output in a file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_path
        ALL_LOGS.append(log_path)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exited(self) -> str | None:
        """Why the program is gone, or None while it runs."""
        return None if self.proc.poll() is None else f"{self.name} exited with {self.proc.returncode}"

    def stop(self, timeout: float = 15.0) -> None:
        stop_process_group(self.proc, timeout)
        self._log.close()


class Service(LoggedProcess):
    """A real gunicorn running the service on loopback."""

    def __init__(self, env: dict[str, str], args: list[str], workdir: Path, tls: bool = True, root: Path = ROOT,
                 port: int | None = None):
        """`root`: the tree whose service runs (another checkout, for bench.ab); `port`: its own, else a free one."""
        self.port = port or free_port()
        self.workdir = workdir
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.env = env
        argv = [sys.executable, "-m", "gunicorn", "-c", str(root / "gunicorn.conf.py"),
                "--bind", f"127.0.0.1:{self.port}", *args, "wsgi:app"]
        super().__init__("gunicorn", argv, root, workdir / f"gunicorn-{self.port}.log", env)

    def wait_ready(self, cert: tuple[str, str] | None, verify: str | bool, timeout: float = 20.0) -> None:
        wait_for_readyz(self.url, cert, verify, self.exited, self.log, timeout)


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


class ServiceStarter:
    """Starts services in one directory and stops them all at the end."""

    def __init__(self, workdir: Path, test_pki: PKI, github: FakeGitHub, database_url: str):
        self.workdir, self.pki, self.github, self.database_url = workdir, test_pki, github, database_url
        self.started: list[Service] = []

    def __call__(self, overrides: dict[str, str | None] | None = None, args: list[str] | None = None,
                 wait: bool = True, port: int | None = None) -> Service:
        env = base_env(self.pki, self.github, self.database_url)
        for name, value in (overrides or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        tls = bool(env.get("TLS_CERT_FILE") or env.get("CRT") or env.get("ACME_DOMAINS"))
        service = Service(env, args or ["--workers", "1"], self.workdir, tls=tls, port=port)
        self.started.append(service)
        if wait:
            service.wait_ready(self.pki.pair("server") if service.scheme == "https" else None, self.pki.ca_file)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop()


def run_gunicorn(env_overrides: dict[str, str], *args: str, run_as: tuple[str, ...] = (), root: Path = ROOT,
                 python: str = sys.executable) -> subprocess.CompletedProcess:
    """gunicorn with the project's configuration and a valid minimal one, until it exits (a refusal to start).

    `run_as`: a command prefix, such as one that runs it as another user, with the `python` and the
    project's `root` that user can read (testkit.deploy.install_copy).
    """
    env = {"PATH": "/usr/bin:/bin", "GITHUB_TOKEN": GITHUB_TOKEN, "ROUTES": "acme/*",
           "DATABASE_URL": "sqlite:////tmp/unused.sqlite3", **env_overrides}
    return subprocess.run([*run_as, python, "-m", "gunicorn", "-c", "gunicorn.conf.py", *args, "wsgi:app"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=30)


def run_flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`flask --app app ARGS` with `env`, as an operator runs it beside the service."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def outbox_command(service: Service, *args: str) -> subprocess.CompletedProcess:
    """An outbox command as operations.md gives it: with DATABASE_URL and nothing else of the service's."""
    return run_flask({"PATH": os.environ["PATH"], "DATABASE_URL": service.env["DATABASE_URL"]}, *args)


def deliveries(service: Service, *args: str) -> list[dict]:
    """What `flask --app app deliveries --json ARGS` lists of the service's outbox, one dict a delivery."""
    result = outbox_command(service, "deliveries", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def scrape(service: Service, pki: PKI) -> dict[tuple, float]:
    """The service's /metrics, each sample by (name, sorted labels). With cert_reqs 2 the TLS layer wants a
    certificate: any will do, such as the server's own."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(service.url + "/metrics", cert=pki.pair("server"), verify=pki.ca_file, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for_log(service, text: str, count: int = 1, timeout: float = 3.0) -> bool:
    """Whether `text` appears `count` times in the service's log within `timeout` (logs lag answers)."""
    return wait_until(lambda: service.log().count(text) >= count, timeout)
