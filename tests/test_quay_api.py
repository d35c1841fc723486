"""Quay's API as the relay may use it (issue 33, second step), against a loopback Quay (testkit.quay_api): the exact
requests Quay receives, Quay's refusals in words, and every other route refused before anything is sent."""

from __future__ import annotations

import time

import pytest

from quay_dispatch.quay_side.api import ALLOWED, NotAllowed, QuayAPI, QuayAPIError
from testkit.quay_api import LESSER_TOKEN, QUAY_API_TOKEN, FakeQuay, Repository

RELAY = "https://relay.example.com/incoming/build_success"


@pytest.fixture
def quay():
    fake = FakeQuay()
    yield fake
    fake.close()


def test_notifications_are_listed_created_reset_and_tested_with_exactly_these_requests(quay):
    theirs = quay.add_notification("acme/widget", "repo_push", "https://elsewhere.example/hook", failures=1)
    api = QuayAPI(quay.url, QUAY_API_TOKEN)

    created = api.create_notification("acme/widget", "build_success", RELAY, "quay-dispatch: build_success")
    quay.repositories["acme/widget"].notifications[-1]["number_of_failures"] = 3
    listed = api.notifications("acme/widget")
    api.reset_failures("acme/widget", created.uuid)
    api.send_test("acme/widget", created.uuid)

    assert [(r.method, r.path) for r in quay.requests] == [
        ("POST", "/api/v1/repository/acme/widget/notification/"),
        ("GET", "/api/v1/repository/acme/widget/notification/"),
        ("POST", f"/api/v1/repository/acme/widget/notification/{created.uuid}"),
        ("POST", f"/api/v1/repository/acme/widget/notification/{created.uuid}/test"),
    ]
    assert quay.requests[0].json() == {"event": "build_success", "method": "webhook", "config": {"url": RELAY},
                                       "eventConfig": {}, "title": "quay-dispatch: build_success"}
    assert {r.headers["Authorization"] for r in quay.requests} == {f"Bearer {QUAY_API_TOKEN}"}
    assert [(n.uuid, n.url, n.failures, n.disabled) for n in listed] == [
        (theirs["uuid"], "https://elsewhere.example/hook", 1, False), (created.uuid, RELAY, 3, True)]
    assert quay.repositories["acme/widget"].notifications[-1]["number_of_failures"] == 0
    assert quay.repositories["acme/widget"].tests_sent == [created.uuid]


def test_repositories_builds_and_tags_are_read_page_by_page(quay):
    for name in ("a", "b", "c", "d", "e"):
        quay.repositories.setdefault(f"acme/{name}", Repository())
    quay.repositories["acme/a"].builds = [{"id": "b1", "phase": "complete", "started": "Mon, 07 Dec 2026 10:00:00 "
                                                                                      "-0000"}]
    quay.repositories["acme/a"].tags = [{"name": "latest", "manifest_digest": "sha256:ab", "start_ts": 1}]
    api = QuayAPI(quay.url, QUAY_API_TOKEN)

    assert api.repositories("acme") == ["acme/a", "acme/b", "acme/c", "acme/d", "acme/e"]
    assert [b["id"] for b in api.builds("acme/a", since=1_700_000_000)] == ["b1"]
    assert [t["name"] for t in api.tags("acme/a")] == ["latest"]
    assert [r.path for r in quay.requests[:3]] == ["/api/v1/repository"] * 3  # 2 a page: three pages


@pytest.mark.parametrize("token, status, words", [
    ("not-a-token-at-all", 401, "Quay refused the token (401 The access token is invalid): make a new one"),
    (LESSER_TOKEN, 403, "it needs the repo:admin scope"),
])
def test_a_refused_token_is_said_in_words_without_the_token(quay, token, status, words):
    with pytest.raises(QuayAPIError) as refused:
        QuayAPI(quay.url, token).notifications("acme/widget")

    assert refused.value.status == status
    assert words in str(refused.value) and token not in str(refused.value)


@pytest.mark.parametrize("method, path", [
    ("DELETE", "/api/v1/repository/acme/widget/notification/0f0e5e5e-1111-2222-3333-444455556666"),
    ("PUT", "/api/v1/repository/acme/widget/notification/"),
    ("GET", "/api/v1/repository/acme/widget/permissions/user/"),
    ("POST", "/api/v1/repository/acme/widget/build/"),
    ("POST", "/api/v1/repository/acme/widget/notification/../../permissions/"),
    ("GET", "/api/v1/user/"),
])
def test_no_other_call_leaves_the_client(quay, method, path):
    api = QuayAPI(quay.url, QUAY_API_TOKEN)

    with pytest.raises(NotAllowed, match="is not a call the relay makes"):
        api._call(method, path)

    assert quay.requests == []
    assert not any(m == "DELETE" for m, _ in ALLOWED)


def test_a_repository_name_cannot_reach_another_route(quay):
    api = QuayAPI(quay.url, QUAY_API_TOKEN)

    with pytest.raises(NotAllowed):
        api.notifications("acme/widget/../../../user")
    with pytest.raises(NotAllowed):
        api.reset_failures("acme/widget", "../permissions")
    assert quay.requests == []


def test_a_slow_quay_is_given_up_on_within_the_timeout(quay):
    quay.delay = 3.0
    api = QuayAPI(quay.url, QUAY_API_TOKEN, timeout=0.5)
    started = time.monotonic()

    with pytest.raises(QuayAPIError, match="did not answer: ReadTimeout") as failed:
        api.notifications("acme/widget")

    assert failed.value.status == 0 and time.monotonic() - started < 2.0
