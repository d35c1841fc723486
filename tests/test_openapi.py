"""The requests the service sends GitHub match GitHub's official OpenAPI description (@octokit/openapi)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.credentials import APP_ID, as_app
from testkit.github import FakeApp
from testkit.service import ROOT, require, wait_until

SPECS = ROOT / "var/openapi/node_modules/@octokit/openapi/generated"


@pytest.fixture(scope="module")
def descriptions() -> dict[str, dict]:
    """GitHub's (api.github.com) and GitHub Enterprise Server 3.19's descriptions, with $refs resolved."""
    require(None if SPECS.is_dir() else "@octokit/openapi is not installed: `make test` installs it with npm")
    return {name: json.loads((SPECS / f"{name}.deref.json").read_text()) for name in ("api.github.com", "ghes-3.19")}


def operation(spec: dict, method: str, path: str) -> tuple[str, dict]:
    """The documented operation a request is for: its path template and description."""
    for template, operations in spec["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in operations:
            return template, operations[method.lower()]
    raise AssertionError(f"{method} {path} is not an operation of GitHub's REST API")


def test_every_request_sent_to_github_is_a_documented_operation_with_a_valid_body(
        start_service, test_pki, github, app_key, tmp_path, descriptions):  # noqa: F811
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\n\n'
                      '[[routes]]\nquay = "acme/*"\nworkflow = "deploy.yml"\ninputs = ["sha", "tags", "image"]\n')
    github.app = FakeApp(APP_ID, app_key.public_key(), {"acme/widget": 77})
    github.repos["acme/widget"] = (200, {"full_name": "acme/widget", "default_branch": "trunk"})
    service = start_service(as_app(app_key, ROUTES=None, ROUTES_FILE=str(routes)))
    for commit in ("42d4a62c53350993ea41069e9f2cfdefb0df097d", None):  # a triggered and a manual build
        body = sample_body("build_success", "acme/widget", commit=commit)
        assert send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"),
                              verify=test_pki.ca_file).status_code == 202
    # Two notifications, each to a repository_dispatch route and a workflow_dispatch route.
    assert wait_until(lambda: len([r for r in github.dispatches() if r.status in (200, 204)]) >= 4, timeout=15)
    assert len(github.dispatches()) == 4

    seen = set()
    for request in github.requests:
        assert request.headers["Accept"] == "application/vnd.github+json"
        assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
        for name, spec in descriptions.items():
            template, described = operation(spec, request.method, request.path)
            seen.add(described["operationId"])
            schema = described.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if request.body:
                assert schema is not None, f"{name}: {described['operationId']} takes no body"
                jsonschema.validate(json.loads(request.body), schema)
            else:
                assert not described.get("requestBody", {}).get("required"), f"{name}: {template} needs a body"
    assert seen == {"apps/get-repo-installation", "apps/create-installation-access-token",
                    "repos/create-dispatch-event", "actions/create-workflow-dispatch", "repos/get"}
