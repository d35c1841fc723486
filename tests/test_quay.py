"""The Quay event parser: accepts what Quay sends, refuses what it never sends, naming the field."""

import codecs
import json

import pytest

from quay_dispatch.base.limits import MAX_BODY
from quay_dispatch.domain.quay import PayloadError, parse_event
from quay_dispatch.tools.sample import SAMPLE_COMMIT, sample_body
from testkit.bodies import BAD_BODIES, VALID_TEXT, edited, value_at, with_extra


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


@pytest.mark.parametrize("body, reason", [
    pytest.param(with_extra("[" * 100_000 + "]" * 100_000), "the JSON is nested deeper than 64 levels",
                 id="nested-100000-deep"),
    pytest.param(with_extra("[" * 64 + "]" * 64), "the JSON is nested deeper than 64 levels", id="nested-65-deep"),
    pytest.param(with_extra("1e999999"), "a JSON number is out of range: 1e999999", id="float-overflow"),
    pytest.param(with_extra("1" + "0" * 9_999), "a JSON number is 10000 characters long", id="10000-digits"),
    pytest.param(with_extra("NaN"), "NaN and Infinity are not JSON (the body has NaN)", id="nan"),
    pytest.param(with_extra("-Infinity"), "NaN and Infinity are not JSON (the body has -Infinity)", id="infinity"),
    pytest.param(with_extra(r'"\ud800"'), "a JSON string holds a lone UTF-16 surrogate", id="lone-surrogate"),
    pytest.param(with_extra(r'{"\udfff": 1}'), "a JSON string holds a lone UTF-16 surrogate", id="surrogate-key"),
    pytest.param(f'{{"repository": "evil/x", {VALID_TEXT[1:]}'.encode(), "duplicate key 'repository'",
                 id="duplicate-key"),
    pytest.param(codecs.BOM_UTF8 + VALID_TEXT.encode(), "not UTF-8 JSON: it starts with a UTF-8 byte order mark",
                 id="utf8-bom"),
    pytest.param(codecs.BOM_UTF16_LE + VALID_TEXT.encode("utf-16-le"), "it looks like UTF-16 or UTF-32",
                 id="utf16-le-bom"),
    pytest.param(VALID_TEXT.encode("utf-16-be"), "it looks like UTF-16 or UTF-32", id="utf16-be"),
    pytest.param(VALID_TEXT.encode("utf-32"), "it looks like UTF-16 or UTF-32", id="utf32"),
    pytest.param(VALID_TEXT.encode()[:-1] + b"\xed\xa0\x80}", "byte 0xed at offset", id="encoded-surrogate"),
])
def test_bodies_that_are_not_strict_utf8_json_are_refused_as_a_whole(body, reason):
    with pytest.raises(PayloadError) as raised:
        parse_event("build_success", body)

    assert raised.value.field == ""
    assert reason in raised.value.reason


@pytest.mark.parametrize("value", [
    pytest.param("[" * 63 + "]" * 63, id="64-levels"),
    pytest.param(r'"\ud83d\ude00 caf\u00e9"', id="surrogate-pair"),
    pytest.param("1.7976931348623157e308", id="largest-float"),
    pytest.param("-" + "9" * 99, id="100-characters"),
    pytest.param('{"a": 1, "b": {"a": 2}}', id="same-key-in-two-objects"),
])
def test_strict_json_at_the_edges_of_the_limits_is_accepted(value):
    event = parse_event("build_success", with_extra(value))

    assert event.repository == "acme/widget"


@pytest.mark.parametrize("name, body, message", BAD_BODIES, ids=[name for name, _, _ in BAD_BODIES])
def test_bad_bodies_for_the_live_test_reach_the_parser_and_get_their_message(name, body, message):
    assert len(body) <= MAX_BODY, f"{name} is {len(body)} bytes: the service answers 413 before parsing"
    with pytest.raises(PayloadError) as raised:
        parse_event("build_success", body)

    assert message in str(raised.value)


CONTROL_CHARACTERS = ["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028"]
# Every string the parser takes from a body: (an event that carries it, the field as PayloadError names it).
NAME_FIELDS = [
    ("build_success", "repository"), ("build_success", "namespace"), ("build_success", "name"),
    ("build_success", "docker_url"), ("build_success", "homepage"), ("build_success", "build_id"),
    ("build_success", "trigger_metadata.commit"), ("build_success", "trigger_metadata.ref"),
    ("build_success", "docker_tags[0]"), ("repo_push", "updated_tags[0]"), ("vulnerability_found", "tags[0]"),
]


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=[repr(c) for c in CONTROL_CHARACTERS])
@pytest.mark.parametrize("event, field", NAME_FIELDS, ids=[field for _, field in NAME_FIELDS])
def test_a_control_character_at_the_end_of_a_name_is_refused_naming_field_character_and_position(event, field, char):
    body = sample_body(event, "acme/widget")
    position = len(value_at(body, field))
    edited(body, field, lambda text: text + char)

    with pytest.raises(PayloadError) as raised:
        parse(event, body)

    assert raised.value.field == field
    assert raised.value.reason == f"contains a control character ({char!r}) at position {position}"
    assert char not in str(raised.value)


@pytest.mark.parametrize("event", sorted({event for event, _ in NAME_FIELDS}))
def test_the_bodies_edited_above_parse_unedited(event):
    assert parse(event, sample_body(event, "acme/widget")).repository == "acme/widget"
