"""The image itself: the Dockerfile, unchanged, built and run with podman as docs/deployment.md says.

Real: the build of the Dockerfile as it is (podman, Docker's image format so that the
HEALTHCHECK is kept), the container, its health check, its user, `podman stop` and the
/data volume. Stand-ins: the base image, which no registry can send here, is a Debian
bookworm made with debootstrap (tests/image_base.sh) and tagged as the Dockerfile's FROM;
and podman runs with runc and explicit ulimits (crun fails on this kind of machine on
rlimits and cgroups). podman gets a configuration and storage of its own: nothing of the
host's is read or changed, and nothing is left behind but the base's tarball under var/.
The container uses the host's network, its gunicorn bound to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests
import yaml

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.credentials import ALL_LOGS, GITHUB_TOKEN, QUAY_API_TOKEN
from testkit.deploy import IMAGE_FILES, dockerfile, healthcheck_command, image_command, image_env
from testkit.pebble import DOMAIN, session_for
from testkit.quay_api import Repository
from testkit.service import ROOT, free_port, free_ports, require, wait_for_readyz, wait_until

IMAGE = "localhost/quay-dispatch-test"
CONTAINER = "quay-dispatch"
VOLUME = "quay-dispatch-data"
BASE_SCRIPT = ROOT / "tests" / "image_base.sh"
BASE_CACHE = ROOT / "var" / "image-base"
# What the stand-in base is made from on this machine: when one changes, a new one is made.
BASE_INPUTS = [BASE_SCRIPT, Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf"), Path("/etc/xdg/pip")]
PIP_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
STOP_WITHIN = 10.0  # seconds `podman stop` may take on an idle service


def podman_problem() -> str | None:
    """Why podman cannot build and run the image here, or None."""
    if os.geteuid() != 0:
        return "the image is built and run by root's podman (runc): run the tests as root"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} missing: `make test` installs them with apt-get when run as root"
    return None


class Podman:
    """podman as root with runc, reading a configuration of its own and keeping its storage under `home`."""

    def __init__(self, home: Path):
        self.home = home
        (home / "containers.conf").write_text(
            "[containers]\n"
            # runc on this kind of machine: the container's limits must be set, not inherited.
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            'log_driver = "k8s-file"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{home}/events.log"\n'
            f'tmp_dir = "{home}/tmp"\n'
            f'volume_path = "{home}/volumes"\n'
        )
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{home}/storage"\nrunroot = "{home}/run"\n'
        )
        # Short names mean Docker Hub's, as in Docker; builds use --pull=never, so none is fetched.
        (home / "registries.conf").write_text('unqualified-search-registries = ["docker.io"]\n')
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
            # No systemd to run health-check timers: the test runs the checks itself.
            "DISABLE_HC_SYSTEMD": "true",
        }

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited with {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name).stdout.strip()

    def logs(self, name: str) -> str:
        result = self("logs", name, check=False)
        return result.stdout + result.stderr

    def remove_everything(self) -> None:
        self("system", "reset", "--force", timeout=120, check=False)


def base_image_name() -> str:
    """The Dockerfile's FROM, fully qualified as Docker reads it."""
    name = dockerfile("FROM")
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    return name if "." in first or ":" in first or first == "localhost" else f"docker.io/{name}"


def stand_in_base() -> Path:
    """The stand-in base's tarball, made by tests/image_base.sh unless var/ already holds it."""
    digest = hashlib.sha256()
    for source in BASE_INPUTS:
        for path in sorted(source.rglob("*")) if source.is_dir() else [source]:
            if path.is_file():
                digest.update(str(path).encode() + b"\0" + path.read_bytes())
    tarball = BASE_CACHE / f"bookworm-{digest.hexdigest()[:16]}.tar"
    if tarball.is_file():
        return tarball
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    for stale in BASE_CACHE.glob("bookworm-*.tar"):
        stale.unlink()
    # In a session of its own, so that a timeout ends debootstrap too, and the script unmounts.
    process = subprocess.Popen(["sh", str(BASE_SCRIPT), str(tarball)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"tests/image_base.sh took more than 300 s:\n{output}")
    assert process.returncode == 0 and tarball.is_file(), f"tests/image_base.sh failed:\n{output}"
    return tarball


@pytest.fixture(scope="module")
def podman() -> Podman:
    """A private podman holding the image built from the Dockerfile, on the stand-in base."""
    if problem := podman_problem():
        if os.environ.get("CI") and os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(problem)
        pytest.skip(problem)
    base = stand_in_base()
    home = Path(tempfile.mkdtemp(prefix="quay-dispatch-podman-"))
    podman = Podman(home)
    try:
        # What the official image sets, beside its files; and the index pip is told to use here.
        settings = ["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                    *(f"ENV {name}={os.environ[name]}" for name in PIP_SETTINGS if os.environ.get(name)),
                    'CMD ["python3"]']
        podman("import", *(f"--change={setting}" for setting in settings), str(base), base_image_name(),
               timeout=120)
        podman("build", "--format", "docker", "--pull=never", "--network", "host", "--tag", IMAGE, str(ROOT),
               timeout=400)
        yield podman
    finally:
        podman.remove_everything()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def deployment(tmp_path, test_pki, github):
    """What docs/deployment.md has the operator make: the certificate files for uid 10001 and an env file."""
    tls = tmp_path / "tls"
    server_cert, server_key = test_pki.pair("server")
    # The deploy hook's commands (docs/deployment.md, "Certificate files and uid 10001").
    subprocess.run(["install", "-d", "-m", "0755", str(tls)], check=True)
    subprocess.run(["install", "-o", "10001", "-g", "10001", "-m", "0400", server_key, str(tls / "privkey.pem")],
                   check=True)
    for source, name in ((server_cert, "fullchain.pem"), (test_pki.ca_file, "ca.pem")):
        subprocess.run(["install", "-o", "10001", "-g", "10001", "-m", "0444", source, str(tls / name)], check=True)
    port = free_port()
    env_file = tmp_path / "quay-dispatch.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in {
        "TLS_CERT_FILE": "/tls/fullchain.pem",
        "TLS_KEY_FILE": "/tls/privkey.pem",
        "QUAY_CA_FILE": "/tls/ca.pem",
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "GITHUB_API_URL": github.url,  # http on loopback: the host's network is the container's
        "ROUTES": "acme/*",
        "PORT": str(port),
        # With the host's network, the image's bind (0.0.0.0) would listen on every interface.
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
    }.items()))
    env_file.chmod(0o600)
    github.reset()
    return {"port": port, "mounts": ["-v", f"{VOLUME}:/data", "-v", f"{tls}:/tls:ro", "--env-file", str(env_file)],
            "logs": tmp_path / "container.log"}


def wait_ready(podman: Podman, url: str, test_pki) -> None:
    def exited():
        state = podman.inspect(CONTAINER, "{{.State.Status}}")
        return None if state == "running" else f"the container is {state}"
    wait_for_readyz(url, test_pki.pair("server"), test_pki.ca_file, exited, lambda: podman.logs(CONTAINER), 30)


def listed_deliveries(podman: Podman, *command: str) -> list[tuple[str, str]]:
    """(target, status) of each delivery `flask --app app deliveries --json` lists, run by `command`."""
    result = podman(*command, "flask", "--app", "app", "deliveries", "--json", timeout=60)
    return [(row["target"], row["status"]) for row in map(json.loads, result.stdout.splitlines())]


def process_ids(pid: int) -> list[int]:
    """`pid` and its children, as the host sees them."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def real_and_effective_ids(pid: int) -> tuple[str, str]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return tuple(" ".join(status[name].split()) for name in ("Uid", "Gid"))


def test_image_keeps_its_command_healthcheck_user_volume_and_only_what_runs(podman):
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = info["Config"]
    assert config["Cmd"] == image_command()
    assert info["Healthcheck"]["Test"] == ["CMD", *healthcheck_command()]  # dropped by the OCI format
    assert config["User"] == dockerfile("USER")
    assert list(config["Volumes"]) == [dockerfile("VOLUME")]
    assert config["StopSignal"] == dockerfile("STOPSIGNAL")
    files = podman("run", "--rm", "--network", "none", IMAGE, "find", ".", "-type", "f").stdout.split()
    assert {path.removeprefix("./") for path in files} == IMAGE_FILES


def test_container_delivers_as_uid_10001_stops_within_10_s_and_keeps_its_outbox(podman, deployment, test_pki,
                                                                                 github):
    uid, gid = dockerfile("USER").split(":")
    url = f"https://127.0.0.1:{deployment['port']}"
    podman("volume", "create", VOLUME)
    try:
        podman("run", "-d", "--name", CONTAINER, "--network", "host", *deployment["mounts"], IMAGE)
        wait_ready(podman, url, test_pki)

        health = podman("healthcheck", "run", CONTAINER, check=False)
        assert health.returncode == 0, health.stdout + podman.inspect(CONTAINER, "{{json .State.Health.Log}}")
        assert podman.inspect(CONTAINER, "{{.State.Health.Status}}") == "healthy"
        pids = process_ids(int(podman.inspect(CONTAINER, "{{.State.Pid}}")))
        assert len(pids) >= 2, "gunicorn's master and its workers"
        assert {real_and_effective_ids(pid) for pid in pids} == {(f"{uid} {uid} {uid} {uid}",
                                                                  f"{gid} {gid} {gid} {gid}")}
        assert uid != "0"

        response = send_like_quay(url + "/incoming", sample_body("build_success", "acme/widget"),
                                  test_pki.pair("quay"), verify=test_pki.ca_file)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "accepted"
        [dispatch] = github.wait_for(1, timeout=15)
        assert (dispatch.path, dispatch.json()["event_type"]) == ("/repos/acme/widget/dispatches",
                                                                  "QUAY_BUILD_SUCCESS")
        assert dispatch.headers["Authorization"] == f"Bearer {GITHUB_TOKEN}"
        # docs/deployment.md's `docker exec quay-dispatch flask --app app deliveries`.
        assert wait_until(lambda: listed_deliveries(podman, "exec", CONTAINER) == [("acme/widget", "delivered")],
                          timeout=15, interval=0.5), listed_deliveries(podman, "exec", CONTAINER)
        volume = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", VOLUME).stdout.strip())
        outbox = volume / Path(image_env()["DATABASE_URL"].removeprefix("sqlite:///")).relative_to(dockerfile("VOLUME"))
        assert outbox.is_file(), sorted(p.name for p in volume.iterdir())
        assert (outbox.stat().st_uid, volume.stat().st_uid) == (int(uid), int(uid))

        started = time.monotonic()
        stop = podman("stop", "-t", "30", CONTAINER, timeout=40, check=False)
        took = time.monotonic() - started
        assert stop.returncode == 0, stop.stderr
        assert took < STOP_WITHIN, f"podman stop took {took:.1f} s"
        assert podman.inspect(CONTAINER, "{{.State.ExitCode}}") == "0"

        # A new container on the same volume, as after an upgrade.
        second_run = ("run", "--rm", "--network", "none", *deployment["mounts"], IMAGE)
        assert listed_deliveries(podman, *second_run) == [("acme/widget", "delivered")]
    finally:
        deployment["logs"].write_text(podman.logs(CONTAINER))
        ALL_LOGS.append(deployment["logs"])  # checked for secrets when the session ends
        podman("rm", "--force", CONTAINER, check=False)
        podman("volume", "rm", "--force", VOLUME, check=False)


def test_the_acme_deployment_gets_its_certificate_and_serves_quay_with_nothing_mounted_but_the_volume(
        podman, pebble_at, test_pki, github, tmp_path):
    """docs/deployment.md's first command, with pebble standing in for Let's Encrypt and the test PKI for the public
    CAs (its root, mounted, is ACME_CA_FILE, for pebble's HTTPS certificate, and QUAY_CA_FILE, for Quay's)."""
    port = free_port()
    pebble = pebble_at(port)
    ca = public_roots(test_pki, tmp_path)
    settings = {**acme_settings(pebble, github), "PORT": str(port), "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"}
    github.reset()
    podman("volume", "create", VOLUME)
    try:
        podman("run", "-d", "--name", CONTAINER, "--network", "host", "-v", f"{VOLUME}:/data", "-v", f"{ca}:/ca:ro",
               *(f"--env={name}={value}" for name, value in settings.items()), IMAGE)
        assert_serves_quay_with_pebbles_certificate(podman, CONTAINER, port, pebble, test_pki, github, tmp_path)
        health = podman("healthcheck", "run", CONTAINER, check=False)
        assert health.returncode == 0, health.stdout + podman.inspect(CONTAINER, "{{json .State.Health.Log}}")
        assert_outbox_is_the_services(podman, VOLUME)
        assert pebble.orders() == 1
    finally:
        keep_log(podman, CONTAINER, tmp_path)
        podman("rm", "--force", CONTAINER, check=False)
        podman("volume", "rm", "--force", VOLUME, check=False)


def test_the_compose_file_runs_the_relay_with_its_env_file_volume_and_page(podman, pebble_at, test_pki, github,
                                                                           tmp_path):
    """compose.yaml under Debian's podman-compose, as written but for what this machine needs: the image built
    above, the host's network (the loopback GitHub and pebble listen on 127.0.0.1 only, so the ports are the
    listeners' own), free ports, and pebble with the test PKI for the public CAs."""
    if not shutil.which("podman-compose"):
        require("podman-compose is missing: `make test` installs it with apt-get when run as root")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    relay = compose["services"]["relay"]
    assert (relay["env_file"], relay["volumes"], relay["restart"]) == ("quay-dispatch.env", ["data:/data"],
                                                                      "unless-stopped")
    assert relay["ports"] == ["443:8443", "127.0.0.1:9090:9090"] and relay["environment"] == {
        "ADMIN_BIND": "0.0.0.0:9090"}
    port, page = free_ports(2)
    pebble = pebble_at(port)
    ca = public_roots(test_pki, tmp_path)
    del relay["build"], relay["ports"]
    relay |= {"image": IMAGE, "network_mode": "host", "volumes": [*relay["volumes"], f"{ca}:/ca:ro"]}
    relay["environment"] |= {"ADMIN_BIND": f"127.0.0.1:{page}", "PORT": str(port),
                             "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(compose))
    (tmp_path / "quay-dispatch.env").write_text("".join(
        f"{name}={value}\n" for name, value in {**acme_settings(pebble, github), "ADMIN_TOKEN": "a" * 48}.items()))
    github.reset()

    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "podman").write_text(PODMAN_COMPOSE_HOST_NETWORK)
    (shim / "podman").chmod(0o755)
    env = podman.env | {"PATH": f"{shim}:{podman.env['PATH']}"}

    def compose_command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["podman-compose", "-p", "quaycompose", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    try:
        started = compose_command("up", "-d")
        assert started.returncode == 0, started.stdout + started.stderr
        names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert names == ["quaycompose_relay_1"], started.stdout[-1500:] + started.stderr[-1500:]
        assert_serves_quay_with_pebbles_certificate(podman, "quaycompose_relay_1", port, pebble, test_pki, github,
                                                    tmp_path)
        metrics = session_for(DOMAIN).get(f"https://127.0.0.1:{page}/metrics", verify=str(tmp_path / "pebble.pem"),
                                          timeout=5)
        assert metrics.status_code == 200 and "quay_dispatch_incoming_total" in metrics.text  # no client certificate
        assert_outbox_is_the_services(podman, "quaycompose_data")
        stopped = compose_command("down")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert podman("volume", "exists", "quaycompose_data", check=False).returncode == 0  # the outbox stays
    finally:
        keep_log(podman, "quaycompose_relay_1", tmp_path)
        compose_command("down", "-v")


# podman-compose 1.0.3 (Debian's) gives a service with network_mode: host its project's network too, which podman
# refuses ("cannot set multiple networks"): on the way to podman, this drops that network from such a `podman run`.
PODMAN_COMPOSE_HOST_NETWORK = """#!/bin/bash
if [[ " $* " == *" --network host "* ]]; then
    out=(); skip=0
    for arg in "$@"; do
        if (( skip )); then skip=0; continue; fi
        if [[ $arg == --net || $arg == --network-alias ]]; then skip=1; continue; fi
        out+=("$arg")
    done
    set -- "${out[@]}"
fi
exec /usr/bin/podman "$@"
"""


def public_roots(test_pki, tmp_path: Path) -> Path:
    """A directory holding the test PKI's root, readable by the container's user, to mount as /ca."""
    ca = tmp_path / "ca"
    subprocess.run(["install", "-d", "-m", "0755", str(ca)], check=True)
    subprocess.run(["install", "-m", "0444", test_pki.ca_file, str(ca / "ca.pem")], check=True)
    return ca


def acme_settings(pebble, github) -> dict[str, str]:
    """What the ACME deployment sets, with pebble for Let's Encrypt and the loopback GitHub for GitHub."""
    return {"ACME_DOMAINS": DOMAIN, "ACME_EMAIL": "ops@example.test", "ACME_DIRECTORY": pebble.directory,
            "ACME_CA_FILE": "/ca/ca.pem", "QUAY_CA_FILE": "/ca/ca.pem", "GITHUB_TOKEN": GITHUB_TOKEN,
            "GITHUB_API_URL": github.url, "ROUTES": "acme/*"}


def assert_serves_quay_with_pebbles_certificate(podman, container: str, port: int, pebble, test_pki, github,
                                                tmp_path: Path) -> None:
    """Once pebble's certificate is served on `port`, Quay's notification is answered 202 and reaches GitHub."""
    root = tmp_path / "pebble.pem"
    root.write_text(pebble.root_pem())
    response = None

    def answered_by_pebbles_certificate() -> bool:
        nonlocal response
        try:
            response = session_for(DOMAIN).post(f"https://127.0.0.1:{port}/incoming",
                                                data=json.dumps(sample_body("build_success", "acme/widget")),
                                                headers={"Content-Type": "application/json"},
                                                cert=test_pki.pair("quay"), verify=str(root), timeout=5)
        except requests.RequestException:  # not yet listening, or still the temporary certificate
            return False
        return True

    assert wait_until(answered_by_pebbles_certificate, timeout=60, interval=0.5), podman.logs(container)
    assert response.status_code == 202, response.text
    assert [r.path for r in github.wait_for(1, timeout=15)] == ["/repos/acme/widget/dispatches"]


def assert_outbox_is_the_services(podman, volume: str) -> None:
    """The outbox on the volume: uid 10001's, and no one else's to read (it holds ACME's keys)."""
    mountpoint = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
    outbox = mountpoint / "quay-dispatch.sqlite3"
    assert (outbox.stat().st_uid, outbox.stat().st_mode & 0o777) == (10001, 0o600)


def keep_log(podman, container: str, tmp_path: Path) -> None:
    """The container's log among the logs checked for secrets at the end of the run."""
    log = tmp_path / f"{container}.log"
    log.write_text(podman.logs(container))
    ALL_LOGS.append(log)


def test_the_quick_start_runs_as_written_from_an_empty_volume_to_a_dispatched_build(podman, pebble_at, test_pki,
                                                                                     github, quay, tmp_path):
    """docs/quickstart.md's commands, in order, as written, with podman for docker and pebble for Let's Encrypt.
    What stands in: the checkout is this tree; the host's network and free ports replace `-p` (the loopback GitHub,
    Quay and pebble listen on 127.0.0.1 only); the env file gets the stand-ins' addresses and roots after the page's
    lines; Quay's sender reaches relay.quay-dispatch.test at 127.0.0.1; a build is emitted before `deliveries`."""
    page = (ROOT / "docs" / "quickstart.md").read_text()
    blocks = re.findall(r"```(sh|env)\n(.*?)```", page, re.S)
    commands = [line for kind, text in blocks if kind == "sh" for line in text.splitlines() if line.strip()]
    (env_file,) = [text for kind, text in blocks if kind == "env"]
    port, admin = free_ports(2)
    pebble = pebble_at(port)
    ca = public_roots(test_pki, tmp_path)
    (tmp_path / "pebble.pem").write_text(pebble.root_pem())
    quay.repositories["myorg/app"] = Repository()
    quay.resolve, quay.verify = {DOMAIN: f"127.0.0.1:{port}"}, str(tmp_path / "pebble.pem")
    for written, here in (("relay.example.com", DOMAIN), ("github_pat_0123456789abcdef", GITHUB_TOKEN),
                          ("your-quay-oauth-token", QUAY_API_TOKEN), ("ADMIN_BIND=0.0.0.0:9090",
                                                                       f"ADMIN_BIND=127.0.0.1:{admin}")):
        assert written in env_file
        env_file = env_file.replace(written, here)
    stand_ins = {"ACME_DIRECTORY": pebble.directory, "ACME_CA_FILE": "/ca/ca.pem", "QUAY_CA_FILE": "/ca/ca.pem",
                 "GITHUB_API_URL": github.url, "QUAY_API_URL": quay.url, "PORT": str(port),
                 "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"}
    (tmp_path / "quay-dispatch.env").write_text(env_file + "".join(f"{k}={v}\n" for k, v in stand_ins.items()))
    github.reset()
    said = {}
    try:
        for command in commands:
            if "deliveries" in command:  # step 7: Quay builds, and sends its notification
                quay.emit("myorg/app", "build_success", sample_body("build_success", "myorg/app"))
                assert wait_until(lambda: [r.path for r in github.dispatches()] == ["/repos/myorg/app/dispatches"],
                                  timeout=20), quay.calls
            if (argv := quick_start_here(command, ca)) is None:
                continue
            done = subprocess.run(["podman", *argv], cwd=tmp_path, env=podman.env, capture_output=True, text=True,
                                  timeout=400)
            assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            said[argv[0] + " " + argv[-1]] = done.stdout + done.stderr
            if argv[:2] == ["run", "-d"]:  # step 5: served with pebble's certificate within a minute
                assert wait_until(lambda: ready_as(DOMAIN, port, test_pki, tmp_path), timeout=60, interval=0.5), \
                    podman.logs(CONTAINER)
                assert_outbox_is_the_services(podman, "quay-dispatch-data")
        assert "configuration is valid" in said["run --online"] and "PROBLEM" not in said["run --online"]
        assert "ACME: certificate issued" in said["logs quay-dispatch"]
        assert "arrived: myorg/app build_success" in said["exec --test"], said["exec --test"]
        assert "delivered" in said["exec deliveries"] and "myorg/app" in said["exec deliveries"]
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", "quay-dispatch-data").stdout.strip()
        with closing(sqlite3.connect(f"{mountpoint}/quay-dispatch.sqlite3")) as outbox:  # the volume the page names
            assert outbox.execute("SELECT quay_repository, status FROM deliveries").fetchall() == [
                ("myorg/app", "delivered")]
    finally:
        keep_log(podman, CONTAINER, tmp_path)
        podman("rm", "--force", CONTAINER, check=False)
        podman("volume", "rm", "--force", "quay-dispatch-data", check=False)


def quick_start_here(command: str, ca: Path) -> list[str] | None:
    """A command of the quick start as podman runs it here (None: nothing to run, the checkout is this tree)."""
    if command.startswith(("git clone ", "cd ")):
        return None
    docker, *argv = shlex.split(command)
    assert docker == "docker", command
    if argv[0] == "build":
        return ["build", "--pull=never", "--network", "host", "--format", "docker", *argv[1:-1], str(ROOT)]
    if argv[0] == "run":
        kept = []
        for arg in argv[1:]:
            if kept and kept[-1] == "-p":
                kept.pop()
                continue
            kept.append(arg)
        detached = ["-d"] if kept[:1] == ["-d"] else []
        return ["run", *detached, "--network", "host", "-v", f"{ca}:/ca:ro", *kept[len(detached):]]
    return argv


def ready_as(name: str, port: int, test_pki, tmp_path: Path) -> bool:
    """Whether the relay answers /readyz 200 with pebble's certificate for `name`."""
    try:
        return session_for(name).get(f"https://127.0.0.1:{port}/readyz", cert=test_pki.pair("quay"),
                                     verify=str(tmp_path / "pebble.pem"), timeout=5).status_code == 200
    except requests.RequestException:
        return False
