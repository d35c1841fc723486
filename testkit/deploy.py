"""The Dockerfile read as Docker reads it (its instructions, the image's command, health check and environment),
and the image's files installed as it installs them, where another user can run them."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from testkit.service import ROOT

DOCKERFILE = ROOT / "Dockerfile"
# What the image holds: the application (its code, the page's templates and stylesheet), nothing of the tests,
# docs or tools.
IMAGE_FILES = {"app.py", "wsgi.py", "gunicorn.conf.py", "requirements.txt"} | {
    str(path.relative_to(ROOT)) for path in (ROOT / "quay_dispatch").rglob("*")
    if path.is_file() and "__pycache__" not in path.parts
}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile(keyword: str) -> str:
    """The arguments of the Dockerfile's one `keyword` instruction."""
    found = [arguments for name, arguments in dockerfile_instructions() if name == keyword]
    assert len(found) == 1, f"expected one {keyword} in the Dockerfile, found {len(found)}"
    return found[0]


def image_command() -> list[str]:
    return json.loads(dockerfile("CMD"))


def healthcheck_command() -> list[str]:
    match = re.search(r"\bCMD\s+(\[.*\])$", dockerfile("HEALTHCHECK"))
    assert match, "the HEALTHCHECK should run an exec-form CMD"
    return json.loads(match.group(1))


def image_env() -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(dockerfile("ENV")))


SERVICE_USER = "nobody"  # stands in for the image's uid 10001 when the tests run as root


def build_context() -> set[str]:
    """The files, relative to ROOT, that .dockerignore lets into the build context.

    The last pattern matching a file or one of its directories decides, as in Docker. fnmatch
    lets `*` cross `/`, which agrees with Docker's rules on the patterns .dockerignore uses
    (`*`, names, `**/`).
    """
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    kept = set()
    for directory, _, files in os.walk(ROOT):
        for name in files:
            relative = (Path(directory) / name).relative_to(ROOT).as_posix()
            parts = relative.split("/")
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            keep = True
            for pattern in patterns:
                if any(fnmatch(prefix, pattern.lstrip("!")) for prefix in prefixes):
                    keep = pattern.startswith("!")
            if keep:
                kept.add(relative)
    return kept


def service_user() -> dict:
    """Popen's arguments to run as a non-root user: nobody as root, else the current user.

    Not runuser: it would stand between gunicorn and the SIGTERM and die by the signal
    itself, where in the container gunicorn is PID 1 and receives `docker stop`'s.
    """
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SERVICE_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def give(path: Path, as_user: dict) -> None:
    if as_user:
        os.chown(path, as_user["user"], as_user["group"])


def python_for(as_user: dict) -> str:
    """A python3 with venv that the service's user can run (pyenv's, under /root, is not one)."""
    candidates = [Path(sys.base_prefix) / "bin" / "python3", Path("/usr/local/bin/python3"), Path("/usr/bin/python3")]
    for candidate in candidates:
        try:
            probe = subprocess.run([str(candidate), "-c", "import ensurepip, venv"], capture_output=True,
                                   timeout=30, **as_user)
        except OSError:  # missing, or not executable by that user
            continue
        if probe.returncode == 0:
            return str(candidate)
    raise AssertionError(f"none of {', '.join(map(str, candidates))} can make a venv as {as_user or 'this user'}")


@dataclass
class Installed:
    """The build context's files and a venv with requirements.txt, in a directory anyone may enter."""

    root: Path
    app: Path
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def install_copy(root: Path) -> Installed:
    """The image's files and a venv with its requirements under `root`, readable by the service's user: a
    checkout may sit where no other user can enter (/root, a mktemp -d directory)."""
    root.chmod(0o755)
    installed = Installed(root, root / "app", root / "venv")
    for relative in build_context():
        (installed.app / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, installed.app / relative)
    subprocess.run([python_for(service_user()), "-m", "venv", str(installed.venv)], check=True, capture_output=True,
                   timeout=120)
    subprocess.run([installed.python, "-m", "pip", "install", "--quiet", "-r", str(installed.app / "requirements.txt")],
                   check=True, capture_output=True, timeout=300)
    return installed
