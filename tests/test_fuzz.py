"""Property tests: no input, however strange, breaks the parser, the routes or the HTTP layer."""

from __future__ import annotations

import codecs
import json
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from quay_dispatch.config import load_settings
from quay_dispatch.domain.plan import plan_dispatches
from quay_dispatch.domain.quay import BUILD_EVENTS, EVENTS, PayloadError, QuayEvent, parse_event
from quay_dispatch.domain.routes import parse_inline_routes, select_routes
from quay_dispatch.runtime.services import services_of
from quay_dispatch.tools.sample import sample_body
from testkit.bodies import VALID_TEXT, edited
from testkit.credentials import GITHUB_TOKEN, INCOMING_TOKEN

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=30,
)
segment = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(lambda s: s.strip(".") != "")
repositories = st.builds(lambda a, b: f"{a}/{b}", segment, segment)
# Bodies close to what Quay sends, with any field possibly replaced by any JSON value.
quay_like = st.builds(
    lambda event, repo, overrides: (event, sample_body(event, repo) | overrides, set(overrides)),
    st.sampled_from(EVENTS), repositories,
    st.dictionaries(st.sampled_from(["repository", "build_id", "trigger_metadata", "docker_tags", "updated_tags",
                                     "tags", "namespace", "docker_url", "homepage"]), json_values, max_size=3),
)

# Strict JSON the parser must take, and hazards it must refuse: each kind of text json.loads would let through.
strict_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                  | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
strict_fragments = (strict_scalars | st.lists(strict_scalars, max_size=3) | st.dictionaries(
    st.text(max_size=5), strict_scalars, max_size=3)).map(json.dumps)
hazard_fragments = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999999", "-1e400", "1.5e309"]),
    st.integers(101, 10_000).map(lambda digits: "7" * digits),
    st.integers(0xD800, 0xDFFF).map(lambda code: f'"x\\u{code:04x}"'),
    st.text(max_size=5).map(lambda key: f"{{{json.dumps(key)}: 1, {json.dumps(key)}: 2}}"),
)
foreign_encodings = st.sampled_from([  # (codec, prefix): everything but the UTF-8 without a BOM that Quay sends
    ("utf-8", codecs.BOM_UTF8), ("utf-16-le", b""), ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", b""),
])


@st.composite
def hazard_bodies(draw) -> tuple[bytes, bool]:
    """A valid build_success body with strict JSON in an "extra" list and any set of hazards; and whether it has any."""
    hazards = draw(st.sets(st.sampled_from(["fragment", "nesting", "duplicate key", "encoding"])))
    fragments = draw(st.lists(strict_fragments, max_size=3))
    if "fragment" in hazards:
        fragments.insert(draw(st.integers(0, len(fragments))), draw(hazard_fragments))
    # Strict nesting stays well inside the 64-level limit with the body's own levels; hazardous is well past it.
    depth = draw(st.integers(100, 100_000) if "nesting" in hazards else st.integers(0, 40))
    codec, prefix = draw(foreign_encodings) if "encoding" in hazards else ("utf-8", b"")
    members = ('"repository": "evil/x", ' if "duplicate key" in hazards else "") + VALID_TEXT[1:-1]
    extra = "[" * depth + ", ".join(fragments) + "]" * depth
    return prefix + f'{{{members}, "extra": [{extra}]}}'.encode(codec), bool(hazards)


def parse_outcome(event: str, body: bytes) -> QuayEvent | PayloadError:
    """The event parsed from `body`, or the PayloadError naming the field or the JSON; any other exception fails."""
    try:
        parsed = parse_event(event, body)
    except PayloadError as exc:
        assert exc.field or "JSON" in exc.reason, exc
        return exc
    assert parsed.event == event
    return parsed


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVENTS), json_values)
def test_any_json_value_is_an_event_or_a_payload_error(event, value):
    outcome = parse_outcome(event, json.dumps(value).encode())

    assert isinstance(outcome, PayloadError) or isinstance(value, dict)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVENTS), st.binary(max_size=300))
def test_any_bytes_are_an_event_or_a_payload_error(event, body):
    outcome = parse_outcome(event, body)

    if isinstance(outcome, QuayEvent):  # only a UTF-8 JSON object can be an event
        assert isinstance(json.loads(body.decode("utf-8")), dict)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVENTS), hazard_bodies())
def test_a_body_with_a_json_hazard_is_a_payload_error_and_one_without_is_an_event(event, case):
    body, hazardous = case

    outcome = parse_outcome(event, body)

    assert isinstance(outcome, PayloadError if hazardous else QuayEvent), outcome


@settings(max_examples=300, deadline=None)
@given(quay_like)
def test_quay_like_bodies_with_strange_fields_parse_or_name_the_field(case):
    event, body, overridden = case

    outcome = parse_outcome(event, json.dumps(body).encode())

    if isinstance(outcome, PayloadError):  # only a field the case changed can be wrong: Quay's own sample parses
        field = re.split(r"[.\[]", outcome.field)[0]
        # json.dumps writes an infinite float as Infinity, which is not JSON: the body's error, not a field's.
        assert field in overridden or (field == "" and "Infinity" in outcome.reason), (outcome, overridden)
    elif outcome.is_namespace_event:
        assert outcome.namespace == body["namespace"]
    else:
        assert outcome.repository == body["repository"]
        assert (outcome.namespace, outcome.name) == tuple(body["repository"].split("/"))


# C0, DEL, C1 and the Unicode line and paragraph separators: what no name may hold.
CONTROL = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u2028", "\u2029"}
control_characters = st.sampled_from(sorted(CONTROL))
refs = st.from_regex(r"refs/(heads|tags)/[A-Za-z0-9._/-]{1,20}", fullmatch=True)
tag_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
# (field, events that carry it, valid values): the name fields a route or a filter looks at.
NAME_FIELDS = [
    ("repository", EVENTS, repositories),
    ("trigger_metadata.ref", BUILD_EVENTS, refs),
    ("docker_tags[0]", BUILD_EVENTS, tag_names),
    ("updated_tags[0]", ("repo_push",), tag_names),
    ("tags[0]", ("vulnerability_found", "repo_image_expiry"), tag_names),
]


@st.composite
def with_control_characters(draw, valid: st.SearchStrategy[str]) -> str:
    """A valid value with one to three control characters inserted anywhere in it."""
    chars = list(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        chars.insert(draw(st.integers(0, len(chars))), draw(control_characters))
    return "".join(chars)


@st.composite
def bodies_with_a_control_character_in_a_name(draw) -> tuple[str, str, dict, str]:
    """(event, field, a Quay-like body whose `field` holds a control character, that field's value)."""
    field, events, valid = draw(st.sampled_from(NAME_FIELDS))
    event = draw(st.sampled_from(events))
    value = draw(with_control_characters(valid))
    return event, field, edited(sample_body(event, draw(repositories)), field, lambda _: value), value


@settings(max_examples=500, deadline=None)
@given(bodies_with_a_control_character_in_a_name())
def test_a_control_character_anywhere_in_a_name_is_a_payload_error_naming_the_field(case):
    event, field, body, value = case
    position, char = next((i, c) for i, c in enumerate(value) if c in CONTROL)

    with pytest.raises(PayloadError) as raised:
        parse_event(event, json.dumps(body).encode())

    assert raised.value.field == field
    assert raised.value.reason == f"contains a control character ({char!r}) at position {position}"


@settings(max_examples=300, deadline=None)
@given(repositories, st.sampled_from(EVENTS), st.lists(st.sampled_from(
    ["acme/*", "acme/api=acme-gh/api", "*/*=mirror/{name}", "other/x", "a*/b*", "acme/?pi"]), min_size=1, max_size=4))
def test_nothing_is_dispatched_that_the_routes_do_not_allow(repository, event_name, entries):
    routes = parse_inline_routes("; ".join(entries))
    namespace, name = repository.split("/")
    event = QuayEvent(event=event_name, repository=repository, namespace=namespace, name=name, build_id="b")
    selection = select_routes(routes, event)

    planned = plan_dispatches(event, selection.routes, b"{}")

    allowed = {r.target(event) for r in routes if fnmatchcase(repository, r.quay) and event_name in r.events}
    assert {p.target for p in planned} <= allowed
    assert selection.repository_routed == any(fnmatchcase(repository, r.quay) for r in routes)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The application in process (no sockets), in token mode, recording without sending."""
    directory: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(load_settings({
        "ROUTES": "acme/*", "DRY_RUN": "1", "GITHUB_TOKEN": GITHUB_TOKEN, "CLIENT_CERT_SOURCE": "none",
        "INCOMING_TOKEN": INCOMING_TOKEN, "DATABASE_URL": f"sqlite:///{directory / 'outbox.sqlite3'}",
    }))
    services_of(app).outbox.migrate()
    return app.test_client()


header_names = st.sampled_from(["Content-Type", "Content-Length", "Authorization", "Transfer-Encoding", "Accept",
                                "X-SSL-Client-Cert", "Expect", "Host"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["/incoming", *(f"/incoming/{e}" for e in EVENTS), "/incoming/x", "/healthz", "/metrics"]),
       st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       st.dictionaries(header_names, header_values, max_size=4),
       st.binary(max_size=500) | json_values.map(lambda v: json.dumps(v).encode()),
       st.booleans())
def test_any_request_gets_a_json_answer_and_never_a_5xx(client, path, method, headers, body, authorized):
    url = path + (f"?token={INCOMING_TOKEN}" if authorized else "")
    headers.pop("Content-Length", None)  # the test client computes it; a false one is gunicorn's to refuse

    response = client.open(url, method=method, headers=headers, data=body)

    assert response.status_code < 500, response.get_data(as_text=True)
    if path != "/metrics" or response.status_code != 200:
        assert isinstance(response.get_json(), dict)
