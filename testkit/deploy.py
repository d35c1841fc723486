"""The Dockerfile read as Docker reads it: its instructions, the image's command, health check and environment."""

from __future__ import annotations

import json
import re
import shlex

from testkit.service import ROOT

DOCKERFILE = ROOT / "Dockerfile"
# What the image holds: the application, nothing of the tests, docs or tools.
IMAGE_FILES = {"app.py", "wsgi.py", "gunicorn.conf.py", "requirements.txt"} | {
    str(path.relative_to(ROOT)) for path in (ROOT / "quay_dispatch").rglob("*.py")
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
