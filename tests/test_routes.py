"""Routes: parsing the TOML and inline forms, and selecting routes for an event."""

import pytest

from quay_dispatch.domain.quay import QuayEvent
from quay_dispatch.domain.routes import Route, RouteError, parse_inline_routes, parse_toml_routes, select_routes


def build(repository="acme/widget", event="build_success", ref="refs/heads/main", tags=("latest",)):
    namespace, name = repository.split("/")
    return QuayEvent(event=event, repository=repository, namespace=namespace, name=name, build_id="b",
                     ref=ref, tags=tags)


def test_inline_routes_with_and_without_target():
    routes = parse_inline_routes("lewagon/*; acme/api=acme/api-server; corp/*=corp-gh/{name}")

    assert [r.quay for r in routes] == ["lewagon/*", "acme/api", "corp/*"]
    assert routes[0].target(build("lewagon/site")) == "lewagon/site"
    assert routes[1].target(build("acme/api")) == "acme/api-server"
    assert routes[2].target(build("corp/app")) == "corp-gh/app"
    assert all(r.events == ("build_success",) for r in routes)


def test_toml_route_with_every_key():
    [route] = parse_toml_routes('''
[[routes]]
quay = "lewagon/*"
github = "lewagon/{name}"
events = ["build_success", "build_failure"]
event_type = "QUAY_BUILD"
branches = ["main", "release/*"]
tags = ["v*"]
''')
    assert route == Route(quay="lewagon/*", github="lewagon/{name}", events=("build_success", "build_failure"),
                          event_type="QUAY_BUILD", branches=("main", "release/*"), tags=("v*",))


@pytest.mark.parametrize("text, words", [
    ("[[routes]]\nquay = 'a/*'\nevent = ['build_success']", "unknown key(s) event"),
    ("[[routes]]\ngithub = 'a/b'", "quay is required"),
    ("[[routes]]\nquay = 'a/*'\nevents = ['build_exploded']", "unknown event 'build_exploded'"),
    ("[[routes]]\nquay = 'a/*'\ngithub = '{owner}/x'", "may only use {namespace} and {name}"),
    ("[[routes]]\nquay = 'a/*'\ngithub = 'no-slash'", "is not an 'owner/repository' template"),
    ("[[routes]]\nquay = 'a/*'\nevent_type = '" + "x" * 101 + "'", "1 to 100 characters"),
    ("[[routes]]\nquay = 'a/*'\nbranches = []", "non-empty list of strings"),
    ("[[routes]]\nquay = 'nosash'", "glob on 'namespace/name'"),
    ("routes = 3", "expected one or more [[routes]] tables"),
    ("[[routes]\n", "not valid TOML"),
])
def test_malformed_routes_file_names_route_and_key(text, words):
    with pytest.raises(RouteError) as raised:
        parse_toml_routes(text)

    assert words in str(raised.value)


def test_inline_route_errors_name_the_entry():
    with pytest.raises(RouteError) as raised:
        parse_inline_routes("acme/*; bad=not a repo")

    assert "entry 2 ('bad=not a repo')" in str(raised.value)


def test_selection_distinguishes_unrouted_from_filtered():
    routes = parse_inline_routes("acme/*")

    assert not select_routes(routes, build("other/x")).repository_routed
    filtered = select_routes(routes, build(event="build_failure"))
    assert filtered.repository_routed and filtered.routes == ()
    assert "event build_failure is not in ['build_success']" in filtered.reasons[0]


def test_branch_and_tag_filters():
    [route] = parse_toml_routes("[[routes]]\nquay = 'acme/*'\nbranches = ['release/*']\ntags = ['v*']")

    assert select_routes((route,), build(ref="refs/heads/release/2", tags=("latest", "v2"))).routes == (route,)
    assert "branch 'main'" in select_routes((route,), build(tags=("v2",))).reasons[0]
    assert "no tag of ['latest']" in select_routes((route,), build(ref="refs/heads/release/2")).reasons[0]
    assert "has no branch" in select_routes((route,), build(ref=None)).reasons[0]


@pytest.mark.parametrize("line, words", [
    ('quay = "acme/*\\n"', "quay = 'acme/*\\n' contains a control character ('\\n') at position 6"),
    ('quay = "acme/*"\ngithub = "acme-gh/{name}\\n"',
     "github = 'acme-gh/{name}\\n' contains a control character ('\\n') at position 14"),
    ('quay = "acme/*"\nworkflow = "deploy.yml\\n"',
     "workflow = 'deploy.yml\\n' contains a control character ('\\n') at position 10"),
    ('quay = "acme/*"\nworkflow = "42\\r\\n"',
     "workflow = '42\\r\\n' contains a control character ('\\r') at position 2"),
    ('quay = "acme/*"\nbranches = ["main", "release/\\u001b*"]',
     "branches = 'release/\\x1b*' contains a control character ('\\x1b') at position 8"),
    ('quay = "acme/*"\nworkflow = "deploy.yml"\nref = "{branch}\\u2028"',
     "ref = '{branch}\\u2028' contains a control character ('\\u2028') at position 8"),
])
def test_route_strings_with_a_control_character_are_refused_naming_route_key_and_character(line, words):
    with pytest.raises(RouteError) as raised:
        parse_toml_routes(f"[[routes]]\n{line}")

    assert str(raised.value) == f"ROUTES_FILE, route 1: {words}"


def test_inline_route_target_with_a_control_character_is_refused_naming_the_entry():
    with pytest.raises(RouteError) as raised:
        parse_inline_routes("acme/*=acme-gh/widget\x00")

    assert str(raised.value) == ("ROUTES, entry 1 ('acme/*=acme-gh/widget\\x00'): github = 'acme-gh/widget\\x00' "
                                 "contains a control character ('\\x00') at position 14")
