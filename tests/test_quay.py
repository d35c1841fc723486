"""The Quay event parser: accepts what Quay sends, refuses what it never sends, naming the field."""

import json

import pytest

from quay_dispatch.quay import PayloadError, parse_event
from quay_dispatch.sample import SAMPLE_COMMIT, sample_body


def parse(event, body):
    return parse_event(event, json.dumps(body).encode())


def test_build_event_with_trigger_metadata():
    event = parse("build_success", sample_body("build_success", "acme/widget", build_id="b-1", branch="release/1"))

    assert (event.repository, event.namespace, event.name) == ("acme/widget", "acme", "widget")
    assert event.commit == SAMPLE_COMMIT
    assert event.branch == "release/1"
    assert event.tags == ("latest",)
    assert event.build_id == "b-1"
    assert not event.is_test


def test_tag_ref_has_no_branch():
    body = sample_body("build_success", "acme/widget")
    body["trigger_metadata"]["ref"] = "refs/tags/v1.0"

    assert parse("build_success", body).branch is None


def test_manual_build_has_no_commit():
    event = parse("build_start", sample_body("build_start", "acme/widget", commit=None))

    assert event.commit is None and event.ref is None and event.branch is None


def test_quay_test_notification_is_recognised_for_build_events_only():
    assert parse("build_failure", sample_body("build_failure", "acme/w", test=True)).is_test
    push = sample_body("repo_push", "acme/w") | {"build_id": "fake-build-id"}
    assert not parse("repo_push", push).is_test


def test_namespace_field_that_disagrees_with_repository_is_accepted():
    body = sample_body("build_success", "acme/widget") | {"namespace": "something-else"}

    assert parse("build_success", body).namespace == "acme"


def test_uppercase_commit_is_normalised():
    body = sample_body("build_success", "acme/widget", commit=SAMPLE_COMMIT.upper())

    assert parse("build_success", body).commit == SAMPLE_COMMIT


@pytest.mark.parametrize("tags", [["latest", "v2"], {"latest": "sha256:1", "v2": "sha256:2"}])
def test_repo_push_updated_tags_list_or_map(tags):
    body = sample_body("repo_push", "acme/widget") | {"updated_tags": tags}

    assert parse("repo_push", body).tags == ("latest", "v2")


def test_unknown_extra_fields_are_ignored():
    body = sample_body("build_success", "acme/widget") | {"new_field_from_a_newer_quay": {"x": 1}}

    assert parse("build_success", body).repository == "acme/widget"


@pytest.mark.parametrize("event, body, field", [
    ("build_success", {"repository": "acme/w"}, "build_id"),
    ("build_success", {"repository": "acme/w", "build_id": ""}, "build_id"),
    ("repo_push", {"repository": "acme/w", "updated_tags": "latest"}, "updated_tags"),
    ("vulnerability_found", {"repository": "acme/w", "tags": {"a": "b"}}, "tags"),
    ("repo_push", {"repository": 7}, "repository"),
    ("repo_push", {"repository": "acme/w", "docker_url": ["x"]}, "docker_url"),
    ("repo_push", {"repository": "acme/w", "namespace": 1}, "namespace"),
    ("repo_push", {"repository": "acme /w"}, "repository"),
    ("build_success", {"repository": "acme/w", "build_id": "1", "trigger_metadata": {"commit": "g" * 40}},
     "trigger_metadata.commit"),
    ("build_success", {"repository": "acme/w", "build_id": "1", "trigger_metadata": {"commit": "a" * 65}},
     "trigger_metadata.commit"),
    ("build_success", {"repository": "acme/w", "build_id": "1", "trigger_metadata": {"ref": 1}},
     "trigger_metadata.ref"),
])
def test_bodies_quay_never_sends_name_the_field(event, body, field):
    with pytest.raises(PayloadError) as raised:
        parse(event, body)

    assert raised.value.field == field
