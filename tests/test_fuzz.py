"""Property tests: no input, however strange, breaks the parser, the routes or the HTTP layer."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from quay_dispatch.config import load_settings
from quay_dispatch.dispatch import plan_dispatches
from quay_dispatch.quay import EVENTS, PayloadError, QuayEvent, parse_event
from quay_dispatch.routes import parse_inline_routes, select_routes
from quay_dispatch.sample import sample_body
from quay_dispatch.services import services
from tests.conftest import GITHUB_TOKEN, INCOMING_TOKEN

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=30,
)
segment = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(lambda s: s.strip(".") != "")
repositories = st.builds(lambda a, b: f"{a}/{b}", segment, segment)
# Bodies close to what Quay sends, with any field possibly replaced by any JSON value.
quay_like = st.builds(
    lambda event, repo, overrides: (event, sample_body(event, repo) | overrides),
    st.sampled_from(EVENTS), repositories,
    st.dictionaries(st.sampled_from(["repository", "build_id", "trigger_metadata", "docker_tags", "updated_tags",
                                     "tags", "namespace", "docker_url", "homepage"]), json_values, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVENTS), json_values)
def test_any_json_value_is_an_event_or_a_payload_error(event, value):
    try:
        parsed = parse_event(event, json.dumps(value).encode())
    except PayloadError as exc:
        assert str(exc)
    else:
        assert isinstance(parsed, QuayEvent) and parsed.event == event


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVENTS), st.binary(max_size=300))
def test_any_bytes_are_an_event_or_a_payload_error(event, body):
    try:
        parse_event(event, body)
    except PayloadError:
        pass


@settings(max_examples=300, deadline=None)
@given(quay_like)
def test_quay_like_bodies_with_strange_fields_parse_or_name_the_field(case):
    event, body = case
    try:
        parsed = parse_event(event, json.dumps(body).encode())
    except PayloadError as exc:
        assert exc.field or "JSON" in exc.reason
    else:
        namespace, _, name = parsed.repository.partition("/")
        assert (parsed.namespace, parsed.name) == (namespace, name)


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
    services(app).outbox.migrate()
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
