"""Quay-shaped notification bodies and sending them exactly as Quay does (for send-sample and tests)."""

from __future__ import annotations

import json
import uuid

import requests

from .quay import BUILD_EVENTS, TEST_BUILD_ID

SAMPLE_COMMIT = "42d4a62c53350993ea41069e9f2cfdefb0df097d"  # the commit of Quay's own samples


def sample_body(
    event: str, repository: str, *, build_id: str | None = None, commit: str | None = SAMPLE_COMMIT,
    branch: str = "main", tags: tuple[str, ...] = ("latest",), test: bool = False,
    quay_host: str = "quay.io",
) -> dict:
    """A body as Quay sends it for `event`; `test=True` gives Quay's Test Notification marker."""
    namespace, _, name = repository.partition("/")
    body = {
        "repository": repository,
        "namespace": namespace,
        "name": name,
        "docker_url": f"{quay_host}/{repository}",
        "homepage": f"https://{quay_host}/repository/{repository}",
    }
    if event in BUILD_EVENTS:
        build_id = TEST_BUILD_ID if test else (build_id or str(uuid.uuid4()))
        body.update({
            "build_id": build_id,
            "build_name": "sample-build",
            "docker_tags": list(tags),
            "trigger_kind": "github",
            "trigger_id": "1245634",
        })
        if commit:  # a manual build (no commit) has no trigger_metadata at all
            body["trigger_metadata"] = {"default_branch": "main", "ref": f"refs/heads/{branch}", "commit": commit}
        body["homepage"] += f"/build/{build_id}"
    elif event == "repo_push":
        body["updated_tags"] = list(tags)
    elif event in ("vulnerability_found", "repo_image_expiry"):
        body["tags"] = list(tags)
    else:
        body["message"] = "sample notification"
    return body


def send_like_quay(url: str, body: dict, cert: tuple[str, str] | None, verify: str | bool = True) -> requests.Response:
    """POST `body` the way Quay's webhook method does: JSON text, its certificate, 10 s timeout."""
    return requests.post(
        url, data=json.dumps(body), headers={"Content-type": "application/json"},
        cert=cert, timeout=10, verify=verify,
    )
