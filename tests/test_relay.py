"""End to end: Quay-shaped calls to a real gunicorn, dispatches checked at a loopback GitHub."""

from __future__ import annotations

import json
import re
import ssl
import time
import uuid

import pytest
import requests

from quay_dispatch.domain.quay import EVENTS
from quay_dispatch.tools.sample import SAMPLE_COMMIT, sample_body, send_like_quay
from testkit.bodies import BAD_BODIES
from testkit.client import post
from testkit.credentials import GITHUB_TOKEN, INCOMING_TOKEN, LEGACY_GITHUB_TOKEN
from testkit.faults import store_locked
from testkit.service import deliveries, wait_until
from testkit.tls import client_context, tls_connect


def dispatches_for(github, build_id, count=1, timeout=10.0):
    """The requests GitHub received whose payload names `build_id`."""
    def found():
        return [r for r in github.requests if build_id in r.body.decode()]
    wait_until(lambda: len(found()) >= count, timeout, interval=0.02)
    return found()


def assert_sent_once_before_a_later_notification(service, test_pki, github, build_id, times=1):
    """GitHub received `build_id` `times` times, and no more once a notification accepted after it has arrived.

    The deliverer sends one host's deliveries in the order they were accepted, so a late
    or repeated dispatch of `build_id` would reach GitHub before the later one.
    """
    later = sample_body("build_success", "acme/widget")
    assert post(service, test_pki, later).status_code == 202
    assert dispatches_for(github, later["build_id"])
    assert len(dispatches_for(github, build_id, timeout=0)) == times


def test_build_success_reaches_github_exactly_as_documented(relay, test_pki, github):
    build_id = str(uuid.uuid4())
    response = post(relay, test_pki, sample_body("build_success", "acme/widget", build_id=build_id))

    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "accepted"
    assert [(d["target"], d["event_type"]) for d in answer["deliveries"]] == [("acme/widget", "QUAY_BUILD_SUCCESS")]
    [sent] = dispatches_for(github, build_id)
    assert sent.method == "POST"
    assert sent.path == "/repos/acme/widget/dispatches"
    assert sent.headers["Accept"] == "application/vnd.github+json"
    assert sent.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert sent.headers["Authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert sent.headers["User-Agent"].startswith("quay-github-actions-dispatch/")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json() == {
        "event_type": "QUAY_BUILD_SUCCESS",
        "client_payload": {
            "text": SAMPLE_COMMIT[:7],
            "sha": SAMPLE_COMMIT,
            "ref": "refs/heads/main",
            "branch": "main",
            "tags": ["latest"],
            "image": "quay.io/acme/widget",
            "build_id": build_id,
            "quay_repository": "acme/widget",
            "event": "build_success",
            "url": f"https://quay.io/repository/acme/widget/build/{build_id}",
        },
    }


def test_manual_build_without_commit_sends_nulls_not_invented_values(relay, test_pki, github):
    build_id = str(uuid.uuid4())
    body = sample_body("build_success", "acme/widget", build_id=build_id, commit=None)
    assert "trigger_metadata" not in body

    assert post(relay, test_pki, body).status_code == 202
    [sent] = dispatches_for(github, build_id)
    payload = sent.json()["client_payload"]
    assert (payload["text"], payload["sha"], payload["ref"], payload["branch"]) == (None, None, None, None)


def test_several_matching_routes_fan_out_one_delivery_per_target(relay, test_pki, github):
    build_id = str(uuid.uuid4())
    response = post(relay, test_pki, sample_body("build_success", "acme/api", build_id=build_id))

    assert response.status_code == 202
    assert sorted(d["target"] for d in response.json()["deliveries"]) == ["acme-gh/api-server", "acme/api"]
    sent = dispatches_for(github, build_id, count=2)
    assert sorted(r.path for r in sent) == ["/repos/acme-gh/api-server/dispatches", "/repos/acme/api/dispatches"]


def test_quay_retrying_a_build_gets_duplicate_and_github_receives_it_once(relay, test_pki, github):
    body = sample_body("build_success", "acme/widget")
    first = post(relay, test_pki, body)
    again = post(relay, test_pki, body)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "reason": "already accepted for acme/widget"}
    assert_sent_once_before_a_later_notification(relay, test_pki, github, body["build_id"])


def test_quay_test_notification_is_answered_and_not_forwarded(relay, test_pki, github):
    body = sample_body("build_success", "acme/widget", test=True)
    before = len(github.requests)

    response = post(relay, test_pki, body)

    assert response.status_code == 200
    assert response.json()["status"] == "test"
    assert "acme/widget" in response.json()["reason"]
    assert_sent_once_before_a_later_notification(relay, test_pki, github, body["build_id"], times=0)
    assert len(github.requests) == before + 1  # the later notification's dispatch alone


def test_route_that_matches_the_repository_but_not_the_event_is_ignored(relay, test_pki, github):
    response = post(relay, test_pki, sample_body("build_failure", "acme/widget"), event="build_failure")

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert "build_failure" in response.json()["reason"]


@pytest.mark.parametrize("event", EVENTS)
def test_every_quay_event_has_its_url(relay, test_pki, event):
    response = post(relay, test_pki, sample_body(event, "acme/widget"), event=event)

    expected = 202 if event == "build_success" else 200
    assert response.status_code == expected, response.text
    assert not response.history  # answered at that URL, not redirected


@pytest.mark.parametrize("event", ["quota_warning", "quota_error"])
def test_every_quota_event_has_its_url_and_a_route_without_it_ignores_it(relay, test_pki, event):
    response = post(relay, test_pki, sample_body(event, "acme"), event=event)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ignored", "reason": (
        f"route 'acme/*': event {event} is not in ['build_success']; "
        f"route 'acme/api': event {event} is not in ['build_success']")}


@pytest.mark.parametrize("cert, reason", [
    ("self_signed", "self-signed"),
    ("other_root", "does not chain to a trusted root"),
    ("expired", "expired on 2020-03-31"),
    ("other_host", "evil.example"),
    ("wildcard_only", "none of its names matches"),
    ("client_auth_only", "does not allow serverAuth"),
    ("quay_leaf_only", "does not chain to a trusted root"),
    ("server", "none of its names matches"),
])
def test_a_caller_that_is_not_quay_is_refused_and_nothing_is_dispatched(relay, test_pki, github, cert, reason):
    body = sample_body("build_success", "acme/widget")

    response = post(relay, test_pki, body, cert=cert)

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert "is not a valid certificate for quay.io" in response.json()["error"]
    assert reason in response.json()["error"]
    # ... and the service goes on serving genuine notifications.
    assert post(relay, test_pki, body).status_code == 202
    assert len(dispatches_for(github, body["build_id"], count=2, timeout=1.0)) == 1


def test_identity_is_checked_before_the_body_is_parsed(relay, test_pki):
    url = relay.url + "/incoming"
    for data, content_type in ((b"{not json", "application/json"), (b"hello", "text/plain")):
        response = requests.post(url, data=data, headers={"Content-Type": content_type},
                                 cert=test_pki.pair("self_signed"), verify=test_pki.ca_file, timeout=10)
        assert response.status_code == 403


def test_repository_without_a_route_is_forbidden(relay, test_pki, github):
    response = post(relay, test_pki, sample_body("build_success", "someone-else/app"))

    assert response.status_code == 403
    assert response.json()["error"] == "no route allows Quay repository 'someone-else/app'"


@pytest.mark.parametrize("mutate, field, words", [
    (lambda b: b.update(repository="no-slash"), "repository", "is not 'namespace/name'"),
    (lambda b: b.update(repository="a/b/c"), "repository", "is not 'namespace/name'"),
    (lambda b: b.update(repository="acme/.."), "repository", "is not 'namespace/name'"),
    (lambda b: b.pop("repository"), "repository", "is required"),
    (lambda b: b.update(build_id=42), "build_id", "must be a string, not a number"),
    (lambda b: b["trigger_metadata"].update(commit="not-hex!"), "trigger_metadata.commit", "is not a commit SHA"),
    (lambda b: b["trigger_metadata"].update(commit="abc12"), "trigger_metadata.commit", "is not a commit SHA"),
    (lambda b: b.update(trigger_metadata="main"), "trigger_metadata", "must be an object"),
    (lambda b: b.update(docker_tags="latest"), "docker_tags", "must be a list of tags"),
    (lambda b: b.update(docker_tags=["ok", 3]), "docker_tags[1]", "must be a string"),
])
def test_a_body_quay_never_sends_is_a_400_naming_the_field(relay, test_pki, mutate, field, words):
    body = sample_body("build_success", "acme/widget")
    mutate(body)

    response = post(relay, test_pki, body)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert words in response.json()["error"]


@pytest.mark.parametrize("data, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, not a list"),
    (b"\xff\xfe", "not UTF-8"),
    *[(body, words) for _, body, words in BAD_BODIES],
], ids=["not json", "a list", "not utf-8", *[name for name, _, _ in BAD_BODIES]])
def test_a_body_that_is_not_strict_json_is_a_400_naming_the_problem(relay, test_pki, data, words):
    response = requests.post(relay.url + "/incoming", data=data, headers={"Content-type": "application/json"},
                             cert=test_pki.pair("quay"), verify=test_pki.ca_file, timeout=10)

    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    assert "Traceback" not in relay.log()


def test_json_nested_100000_deep_is_refused_for_its_size_before_it_is_read(relay, test_pki):
    body = b'{"repository": "acme/widget", "build_id": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    head = (b"POST /incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with tls_connect(relay, client_context(test_pki)) as conn:
        conn.sendall(head + body[:1000])  # the answer comes without the rest of the body
        data = b""
        while (chunk := conn.recv(65536)) and not re.search(rb"\r\n\r\n\{.*\}$", data + chunk, re.S):
            data += chunk
        data += chunk
    status, _, answer = data.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413 ")
    assert "the limit is 65536" in json.loads(answer)["error"]


def test_repo_push_updated_tags_as_a_list_or_a_map_both_parse(relay, test_pki):
    for tags in (["latest", "v1"], {"latest": "sha256:abc", "v1": "sha256:def"}):
        body = sample_body("repo_push", "acme/widget") | {"updated_tags": tags}
        response = post(relay, test_pki, body, event="repo_push")
        assert response.status_code == 200
        assert response.json()["status"] == "ignored"


def test_unknown_event_unknown_path_and_wrong_method_are_json_errors(relay, test_pki):
    cert, ca = test_pki.pair("quay"), test_pki.ca_file
    unknown = requests.post(relay.url + "/incoming/build_exploded", json={}, cert=cert, verify=ca, timeout=10)
    nowhere = requests.post(relay.url + "/elsewhere", json={}, cert=cert, verify=ca, timeout=10)
    wrong_method = requests.get(relay.url + "/incoming", cert=cert, verify=ca, timeout=10)

    assert unknown.status_code == 404
    assert "unknown event 'build_exploded'" in unknown.json()["error"]
    assert nowhere.status_code == 404 and nowhere.json()["status"] == "error"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] and wrong_method.json()["status"] == "error"


def test_a_body_over_64_kib_is_413_declared_or_streamed(relay, test_pki):
    big = json.dumps(sample_body("build_success", "acme/widget") | {"padding": "x" * 70_000}).encode()
    cert, ca = test_pki.pair("quay"), test_pki.ca_file
    declared = requests.post(relay.url + "/incoming", data=big, headers={"Content-Type": "application/json"},
                             cert=cert, verify=ca, timeout=10)
    streamed = requests.post(relay.url + "/incoming", data=iter([big[:40_000], big[40_000:]]),
                             headers={"Content-Type": "application/json"}, cert=cert, verify=ca, timeout=10)

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "65536" in streamed.json()["error"]


def test_a_body_that_is_not_json_is_415(relay, test_pki):
    response = requests.post(relay.url + "/incoming", data="repository=acme/widget",
                             headers={"Content-Type": "application/x-www-form-urlencoded"},
                             cert=test_pki.pair("quay"), verify=test_pki.ca_file, timeout=10)

    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_github_5xx_is_retried_until_delivered(start_service, test_pki, github):
    github.answer(503, {"message": "Service unavailable"}, times=2)
    service = start_service()
    body = sample_body("build_success", "acme/widget")

    assert post(service, test_pki, body).status_code == 202

    sent = dispatches_for(github, body["build_id"], count=3, timeout=15)
    assert len(sent) == 3
    assert all(r.body == sent[0].body for r in sent)
    assert "retry in" in service.log()


def test_github_404_fails_the_delivery_at_once_and_it_stays_visible(start_service, test_pki, github):
    github.answer(404, {"message": "Not Found", "documentation_url": "https://docs.github.com"})
    service = start_service()
    body = sample_body("build_success", "acme/widget")

    assert post(service, test_pki, body).status_code == 202
    assert len(dispatches_for(github, body["build_id"])) == 1

    assert wait_until(lambda: deliveries(service, "--status", "failed"), timeout=5, interval=0.1)
    [failed] = deliveries(service, "--status", "failed")
    assert failed["target"] == "acme/widget"
    assert failed["last_status"] == 404
    assert failed["last_error"] == "GitHub answered 404: Not Found"
    assert len(dispatches_for(github, body["build_id"], count=2, timeout=2)) == 1


def test_dry_run_records_what_would_be_sent_and_sends_nothing(start_service, test_pki, github):
    service = start_service({"DRY_RUN": "1", "GITHUB_TOKEN": None})
    body = sample_body("build_success", "acme/widget")

    response = post(service, test_pki, body)

    assert response.status_code == 202
    [recorded] = deliveries(service)
    assert recorded["status"] == "dry_run"  # never pending: the deliverer has nothing to send
    # Nor is it sent another way; the deliverer looks at least once a second.
    assert not wait_until(lambda: github.requests, timeout=2.5)
    assert json.loads(recorded["body"])["client_payload"]["build_id"] == body["build_id"]


def test_original_service_environment_names_keep_working(start_service, test_pki, github):
    server_cert, server_key = test_pki.pair("server")
    service = start_service({"GITHUB_TOKEN": None, "GH_TOKEN": LEGACY_GITHUB_TOKEN,
                             "TLS_CERT_FILE": None, "TLS_KEY_FILE": None, "CRT": server_cert, "KEY": server_key,
                             "DEBUG": "true"})
    body = sample_body("build_success", "acme/widget")

    assert post(service, test_pki, body).status_code == 202
    [sent] = dispatches_for(github, body["build_id"])
    assert sent.headers["Authorization"] == f"Bearer {LEGACY_GITHUB_TOKEN}"
    assert sent.json()["event_type"] == "QUAY_BUILD_SUCCESS"


def test_routes_file_with_branch_and_tag_filters(start_service, test_pki, github, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('''
[[routes]]
quay = "acme/*"
github = "acme-gh/{name}"
events = ["build_success", "repo_push"]
event_type = "deploy"
branches = ["main", "release/*"]

[[routes]]
quay = "acme/widget"
events = ["repo_push"]
tags = ["v*"]
''')
    service = start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})

    on_main = post(service, test_pki, sample_body("build_success", "acme/widget", branch="release/2.0"))
    on_feature = post(service, test_pki, sample_body("build_success", "acme/widget", branch="feature/x"))
    pushed = post(service, test_pki, sample_body("repo_push", "acme/widget", tags=("v1.2",)), event="repo_push")

    assert on_main.status_code == 202
    assert on_main.json()["deliveries"][0]["target"] == "acme-gh/widget"
    assert on_main.json()["deliveries"][0]["event_type"] == "deploy"
    assert on_feature.status_code == 200
    assert "branch 'feature/x' does not match ['main', 'release/*']" in on_feature.json()["reason"]
    # repo_push has no branch: the first route skips it, the second one sends it on its tag.
    assert pushed.status_code == 202
    assert [d["target"] for d in pushed.json()["deliveries"]] == ["acme/widget"]
    assert [d["event_type"] for d in pushed.json()["deliveries"]] == ["QUAY_REPO_PUSH"]


def test_incoming_token_is_required_as_basic_password_or_query(start_service, test_pki, github):
    token = INCOMING_TOKEN
    service = start_service({"INCOMING_TOKEN": token, "DEBUG": "true"})
    body = sample_body("build_success", "acme/widget")
    base = service.url.replace("https://", "")

    missing = post(service, test_pki, body)
    wrong = send_like_quay(f"https://quay:wrong-token-0000000000000000@{base}/incoming", body,
                           test_pki.pair("quay"), verify=test_pki.ca_file)
    in_userinfo = send_like_quay(f"https://quay:{token}@{base}/incoming", body,
                                 test_pki.pair("quay"), verify=test_pki.ca_file)
    in_query = send_like_quay(f"https://{base}/incoming/repo_push?token={token}",
                              sample_body("repo_push", "acme/widget"), test_pki.pair("quay"), verify=test_pki.ca_file)

    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    assert wrong.status_code == 401
    assert in_userinfo.status_code == 202
    assert in_query.status_code == 200
    assert token not in service.log()


def test_cert_reqs_1_lets_a_client_without_certificate_reach_http_and_get_403(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--cert-reqs", "1"])

    response = post(service, test_pki, sample_body("build_success", "acme/widget"), cert=None)

    assert response.status_code == 403
    assert response.json()["error"].startswith("no client certificate was presented")


def test_a_locked_store_sends_directly_workflows_included_and_records_it_once_unlocked(
        start_service, test_pki, github, database_url, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\n\n[[routes]]\nquay = "acme/deploy"\nworkflow = "deploy.yml"\n'
                      'ref = "{branch}"\n')
    service = start_service({"ROUTES": None, "ROUTES_FILE": str(routes), "STORE_TIMEOUT": "1"})
    github.repos["acme/deploy"] = (200, {"default_branch": "trunk"})
    body = sample_body("build_success", "acme/deploy", commit=None)  # a manual build: no branch
    with store_locked(database_url):
        response = post(service, test_pki, body)
        ready = requests.get(service.url + "/readyz", cert=test_pki.pair("server"), verify=test_pki.ca_file,
                             timeout=15)

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "dispatched"
    assert sorted(d.get("workflow", "") for d in response.json()["deliveries"]) == ["", "deploy.yml"]
    assert ready.status_code == 503
    sent = dispatches_for(github, body["build_id"], count=1)
    [workflow] = [r for r in github.dispatches() if "/actions/workflows/" in r.path]
    assert workflow.path == "/repos/acme/deploy/actions/workflows/deploy.yml/dispatches"
    assert workflow.json() == {"ref": "trunk", "return_run_details": True}
    assert [r.path for r in sent] == ["/repos/acme/deploy/dispatches"]
    # Unlocked, the outbox learns of both; Quay's retry is then a duplicate, and nothing is sent again.
    retry = None
    for _ in range(50):
        retry = post(service, test_pki, body)
        if retry.json()["status"] == "duplicate" and "already accepted" in retry.json()["reason"]:
            break
        time.sleep(0.2)
    assert retry.json() == {"status": "duplicate", "reason": "already accepted for acme/deploy, acme/deploy"}
    assert len(github.dispatches()) == 2


def test_json_logs_carry_one_object_per_request_with_its_id(start_service, test_pki):
    service = start_service({"LOG_FORMAT": "json"})

    response = post(service, test_pki, sample_body("build_success", "nobody/app"))

    request_id = response.headers["X-Request-Id"]
    assert wait_until(lambda: request_id in service.log(), timeout=3)
    [line] = [json.loads(line) for line in service.log().splitlines() if request_id in line]
    assert line["status"] == 403 and line["path"] == "/incoming" and line["method"] == "POST"
    assert line["detail"] == "no route allows Quay repository 'nobody/app'"
    with pytest.raises((ssl.SSLError, OSError)), tls_connect(service, client_context(test_pki, None)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        conn.recv(1)
    assert wait_until(lambda: "TLS handshake with 127.0.0.1 failed" in service.log(), timeout=5)
    service.stop()
    # gunicorn's own lines too (boots, the failed handshake, the shutdown): JSON throughout.
    lines = [json.loads(line) for line in service.log().splitlines()]
    assert {"gunicorn.error", "quay_dispatch.http"} <= {line["logger"] for line in lines}


def raw_exchange(service, test_pki, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send `request` as it is over TLS; the status line, headers and body of the answer."""
    with tls_connect(service, client_context(test_pki)) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


@pytest.mark.parametrize("request_bytes, status, words", [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "414 URI Too Long", "Request Line is too large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(40)) + b"\r\n",
     "431 Request Header Fields Too Large", "headers"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"y" * 9000 + b"\r\n\r\n",
     "431 Request Header Fields Too Large", "headers"),
    (b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", "400 Bad Request", "Invalid HTTP header name"),
], ids=["request line too long", "too many headers", "header too large", "malformed header"])
def test_gunicorns_own_refusals_are_json_with_a_request_id(relay, test_pki, request_bytes, status, words):
    line, headers, body = raw_exchange(relay, test_pki, request_bytes)

    assert line == f"HTTP/1.1 {status}"
    assert headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{12}", headers["x-request-id"])
    answer = json.loads(body)
    assert answer["status"] == "error"
    assert words in answer["error"]


def test_options_is_answered_with_the_allowed_methods_as_json(relay, test_pki):
    response = requests.options(relay.url + "/incoming", cert=test_pki.pair("quay"), verify=test_pki.ca_file,
                                timeout=10)

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "allow": ["OPTIONS", "POST"]}
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert response.headers["X-Request-Id"]
