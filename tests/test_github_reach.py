"""Reaching every GitHub: App authentication, Enterprise Server, workflow_dispatch — against a loopback GitHub."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.credentials import APP_ID, as_app, key_pem
from testkit.github import FakeApp, FakeGitHub
from testkit.service import base_env, deliveries, run_flask, wait_until


def accept(service, test_pki, repository="acme/widget", **kwargs) -> dict:
    body = sample_body("build_success", repository, **kwargs)
    response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)
    assert response.status_code == 202, response.text
    return body


def succeeded(github) -> list:
    return [r for r in github.dispatches() if 200 <= r.status < 300]


def test_app_jwt_is_exchanged_for_an_installation_token_and_reused(start_service, test_pki, github, app_key):
    github.app = FakeApp(APP_ID, app_key.public_key(), {"acme/widget": 77})
    service = start_service(as_app(app_key))

    accept(service, test_pki)
    accept(service, test_pki)

    assert wait_until(lambda: len(succeeded(github)) == 2)
    lookups = [r for r in github.requests if r.path == "/repos/acme/widget/installation"]
    exchanges = [r for r in github.requests if r.path == "/app/installations/77/access_tokens"]
    assert len(lookups) == 1 and len(exchanges) == 1  # cached: the installation, then its token
    assert all(r.status in (200, 201) for r in lookups + exchanges)
    token = next(iter(github.app.tokens))
    assert all(r.headers["Authorization"] == f"Bearer {token}" for r in succeeded(github))


def test_a_token_that_stops_working_mid_delivery_is_replaced_at_once(start_service, test_pki, github, app_key):
    # Each token works once, though it claims to last an hour: the second dispatch meets a 401.
    github.app = FakeApp(APP_ID, app_key.public_key(), {"acme/widget": 77}, uses=1)
    service = start_service(as_app(app_key))

    accept(service, test_pki)
    assert wait_until(lambda: len(succeeded(github)) == 1)
    accept(service, test_pki)

    assert wait_until(lambda: len(succeeded(github)) == 2)
    assert [r.status for r in github.dispatches()] == [204, 401, 204]
    assert len(github.app.tokens) == 2
    assert "attempt 2" not in service.log()  # replaced within the same attempt


def test_a_token_close_to_its_expiry_is_not_used(start_service, test_pki, github, app_key):
    github.app = FakeApp(APP_ID, app_key.public_key(), {"acme/widget": 77}, claimed_ttl=120)
    service = start_service(as_app(app_key, GITHUB_APP_INSTALLATION_ID="77"))

    accept(service, test_pki)
    accept(service, test_pki)

    assert wait_until(lambda: len(succeeded(github)) == 2)
    assert len(github.app.tokens) == 2
    assert not [r for r in github.requests if r.path.endswith("/installation")]  # the id was given


def test_a_repository_the_app_is_not_installed_on_fails_for_good(start_service, test_pki, github, app_key,
                                                                 tmp_path):
    github.app = FakeApp(APP_ID, app_key.public_key(), {"acme/widget": 77})
    key_file = tmp_path / "app.pem"
    key_file.write_text(key_pem(app_key))
    service = start_service(as_app(app_key, GITHUB_APP_PRIVATE_KEY=None, GITHUB_APP_PRIVATE_KEY_FILE=str(key_file)))

    accept(service, test_pki, repository="acme/elsewhere")

    assert wait_until(lambda: "the GitHub App is not installed on acme/elsewhere" in service.log())
    assert github.dispatches() == []


def test_a_jwt_github_refuses_fails_the_delivery_with_the_reason(start_service, test_pki, github, app_key):
    github.app = FakeApp("999", app_key.public_key(), {"acme/widget": 77})  # another App's id
    service = start_service(as_app(app_key))

    accept(service, test_pki)

    assert wait_until(lambda: "GitHub refused the App's JWT" in service.log())
    assert "check GITHUB_APP_ID and the private key" in service.log()


def test_github_enterprise_server_with_a_private_ca(start_service, test_pki, tmp_path):
    ghes = FakeGitHub(prefix="/api/v3", tls=test_pki.pair("server"))
    try:
        service = start_service({"GITHUB_API_URL": ghes.url, "GITHUB_CA_FILE": test_pki.ca_file})
        untrusting = start_service({"GITHUB_API_URL": ghes.url,
                                    "DATABASE_URL": f"sqlite:///{tmp_path / 'untrusting.sqlite3'}"})
        body = accept(service, test_pki)
        accept(untrusting, test_pki)

        assert wait_until(lambda: len(succeeded(ghes)) == 1)
        [sent] = succeeded(ghes)
        assert sent.path == "/api/v3/repos/acme/widget/dispatches"
        assert sent.json()["client_payload"]["build_id"] == body["build_id"]
        assert wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in untrusting.log())
    finally:
        ghes.close()


def test_workflow_dispatch_on_the_builds_branch_with_chosen_inputs(start_service, test_pki, github, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\nworkflow = "deploy.yml"\ninputs = ["sha", "tags", "image"]\n')
    github.answer(200, {"workflow_run_id": 1, "run_url": "https://api.github.com/x", "html_url": "https://x"})
    service = start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})

    body = sample_body("build_success", "acme/widget", branch="release/2", tags=("v2", "latest"))
    response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)

    assert response.status_code == 202
    assert response.json()["deliveries"][0]["workflow"] == "deploy.yml"
    assert wait_until(lambda: len(succeeded(github)) == 1)
    [sent] = github.dispatches()
    assert sent.path == "/repos/acme/widget/actions/workflows/deploy.yml/dispatches"
    assert sent.json() == {"ref": "release/2", "inputs": {"sha": body["trigger_metadata"]["commit"],
                                                          "tags": "v2,latest", "image": "quay.io/acme/widget"},
                           "return_run_details": True}


def test_workflow_dispatch_without_a_branch_runs_on_the_default_branch(start_service, test_pki, github, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\nworkflow = "deploy.yml"\ninputs = ["sha"]\n')
    github.repos["acme/widget"] = (200, {"full_name": "acme/widget", "default_branch": "trunk"})
    service = start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})

    accept(service, test_pki, commit=None)  # a manual build: no branch, no commit
    accept(service, test_pki, commit=None)

    assert wait_until(lambda: len(succeeded(github)) == 2)
    assert [r.json() for r in github.dispatches()] == [{"ref": "trunk", "return_run_details": True}] * 2
    assert len([r for r in github.requests if r.method == "GET"]) == 1  # the default branch is cached


RUN = {"workflow_run_id": 1520, "run_url": "https://api.github.com/repos/acme/widget/actions/runs/1520",
       "html_url": "https://github.com/acme/widget/actions/runs/1520"}


def workflow_service(start_service, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\nworkflow = "deploy.yml"\nref = "main"\n')
    return start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})


def test_a_workflow_dispatch_records_the_run_github_says_it_started(start_service, test_pki, github, tmp_path):
    github.answer(200, RUN)
    service = workflow_service(start_service, tmp_path)

    accept(service, test_pki)

    assert wait_until(lambda: len(succeeded(github)) == 1)
    assert succeeded(github)[0].json() == {"ref": "main", "return_run_details": True}
    assert wait_until(lambda: deliveries(service)[0]["status"] == "delivered")
    assert deliveries(service)[0]["run_url"] == RUN["html_url"]
    assert RUN["html_url"] in run_flask(service.env, "deliveries").stdout


def test_a_github_that_refuses_return_run_details_gets_each_dispatch_once_without_it(start_service, test_pki,
                                                                                      github, tmp_path):
    github.answer(422, {"message": 'Invalid request.\n\n"return_run_details" is not a permitted key.'})
    service = workflow_service(start_service, tmp_path)

    accept(service, test_pki)
    assert wait_until(lambda: len(succeeded(github)) == 1)
    accept(service, test_pki)
    assert wait_until(lambda: len(succeeded(github)) == 2)
    time.sleep(0.5)  # a dispatch sent twice would come now

    assert [r.json() for r in github.dispatches()] == [{"ref": "main", "return_run_details": True},
                                                       {"ref": "main"}, {"ref": "main"}]  # and remembered
    assert [(d["status"], d["attempts"], d["run_url"]) for d in deliveries(service)] == [("delivered", 1, None)] * 2
    assert "does not know workflow_dispatch's return_run_details" in service.log()


def test_a_422_keeps_githubs_message(start_service, test_pki, github, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\nworkflow = "deploy.yml"\ninputs = ["sha"]\n')
    github.answer(422, {"message": "Unexpected inputs provided: [\"sha\"]"})
    service = start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})

    accept(service, test_pki)

    assert wait_until(lambda: 'GitHub answered 422: Unexpected inputs provided: ["sha"]' in service.log())
    assert json.loads(github.dispatches()[0].body)["inputs"] == {"sha": sample_body("build_success", "a/b")[
        "trigger_metadata"]["commit"]}


def test_check_config_online_checks_the_apps_installation_and_permissions(test_pki, github, app_key, database_url):
    github.reset()
    github.app = FakeApp(APP_ID, app_key.public_key(), {"acme/api": 5, "acme/deploy": 6},
                         permissions={"contents": "write", "metadata": "read"})
    routes = ('[[routes]]\nquay = "acme/api"\n\n[[routes]]\nquay = "acme/deploy"\nworkflow = "deploy.yml"\n\n'
              '[[routes]]\nquay = "acme/gone"\n')
    env = base_env(test_pki, github, database_url) | {"ROUTES": "", "ROUTES_FILE": str(test_pki.dir / "r.toml")}
    (test_pki.dir / "r.toml").write_text(routes)
    env = {k: v for k, v in (env | as_app(app_key)).items() if v is not None}

    result = run_flask(env, "check-config", "--online")

    assert result.returncode == 1, result.stderr
    assert "authentication" in result.stdout and f"GitHub App {APP_ID}" in result.stdout
    assert ("credentials: ok, GitHub App quay-dispatch-test's JWT accepted; installed on acme (5), acme (6)"
            in result.stdout)
    assert "acme/api: ok, the App's installation 5 may write contents" in result.stdout
    assert "acme/deploy: PROBLEM, the App's installation 6 lacks actions: write" in result.stdout
    assert "acme/gone: PROBLEM, the GitHub App is not installed on acme/gone" in result.stdout


@pytest.mark.parametrize("installations, signed_by, words", [
    ({}, "app_key", "credentials: PROBLEM, GitHub App quay-dispatch-test's JWT is accepted, but the App is installed "
                    "nowhere"),
    ({"acme/api": 5}, "other_key", "credentials: PROBLEM, GitHub refused the App's JWT while reading the App"),
])
def test_check_config_online_proves_the_app_even_when_every_route_is_a_glob(test_pki, github, app_key, database_url,
                                                                            installations, signed_by, words):
    github.reset()
    github.app = FakeApp(APP_ID, app_key.public_key(), installations)
    key = app_key if signed_by == "app_key" else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    env = {k: v for k, v in (base_env(test_pki, github, database_url) | {"ROUTES": "acme/*"} | as_app(key)).items()
           if v is not None}

    result = run_flask(env, "check-config", "--online")

    assert result.returncode == 1
    assert words in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="session")
def backend() -> str:
    """What this module tests does not depend on the outbox's database: SQLite is enough."""
    return "sqlite"
