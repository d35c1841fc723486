"""Quay-shaped notification bodies and sending them exactly as Quay does (for send-sample and tests)."""

from __future__ import annotations

import json
import uuid

import requests

from ..domain.quay import BUILD_EVENTS, NAMESPACE_EVENTS, TEST_BUILD_ID

SAMPLE_COMMIT = "42d4a62c53350993ea41069e9f2cfdefb0df097d"  # the commit of Quay's own samples
# The figures of Quay's own quota samples (QuotaWarningEvent, QuotaErrorEvent in notifications/notificationevent.py).
SAMPLE_QUOTA = {
    "quota_warning": {"threshold_percent": 80, "usage_bytes": 858993459, "limit_bytes": 1073741824,
                      "usage_percent": 80, "usage_bytes_formatted": "819.20 MB", "limit_bytes_formatted": "1.00 GB"},
    "quota_error": {"threshold_percent": 100, "usage_bytes": 1127428915, "limit_bytes": 1073741824,
                    "usage_percent": 105, "usage_bytes_formatted": "1.05 GB", "limit_bytes_formatted": "1.00 GB"},
}


def sample_body(
    event: str, repository: str, *, build_id: str | None = None, commit: str | None = SAMPLE_COMMIT,
    branch: str = "main", tags: tuple[str, ...] = ("latest",), test: bool = False,
    quay_host: str = "quay.io",
) -> dict:
    """A body as Quay sends it for `event`; `test=True` gives Quay's Test Notification marker.

    A namespace event's body names only the namespace of `repository` (which may be a bare namespace).
    """
    namespace, _, name = repository.partition("/")
    if event in NAMESPACE_EVENTS:
        return {"namespace": namespace, "homepage": f"https://{quay_host}/organization/{namespace}",
                **SAMPLE_QUOTA[event]}
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
