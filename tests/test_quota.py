"""Quota events (quota_warning, quota_error): namespace notifications, routed by namespace to an explicit target."""

from __future__ import annotations

import json

import pytest

from quay_dispatch.domain.plan import client_payload, plan_dispatches
from quay_dispatch.domain.quay import PayloadError, QuayEvent, parse_event
from quay_dispatch.domain.routes import Route, RouteError, parse_toml_routes, select_routes
from quay_dispatch.tools.sample import sample_body
from testkit.client import post
from testkit.service import wait_until

# Quay's own sample for quota_warning (QuotaWarningEvent.get_sample_data), as its webhook sends it.
QUAY_WARNING_SAMPLE = {
    "namespace": "acme",
    "homepage": "https://quay.io/organization/acme",
    "threshold_percent": 80,
    "usage_bytes": 858993459,
    "limit_bytes": 1073741824,
    "usage_percent": 80,
    "usage_bytes_formatted": "819.20 MB",
    "limit_bytes_formatted": "1.00 GB",
}
WARNING_PAYLOAD = {
    "namespace": "acme",
    "event": "quota_warning",
    "url": "https://quay.io/organization/acme",
    "threshold_percent": 80,
    "usage_percent": 80,
    "usage_bytes": 858993459,
    "limit_bytes": 1073741824,
}
QUOTA_ROUTES = '''
[[routes]]
quay = "acme/*"
github = "acme/infra"
events = ["quota_warning", "quota_error"]
'''


def parse(event, body):
    return parse_event(event, json.dumps(body).encode())


def quota(event="quota_warning", namespace="acme"):
    return parse(event, sample_body(event, namespace))


# Parsing


def test_the_sample_body_is_quays_own_sample():
    assert sample_body("quota_warning", "acme/anything") == QUAY_WARNING_SAMPLE


def test_a_quota_warning_is_a_namespace_event_with_the_quota_figures():
    event = parse("quota_warning", QUAY_WARNING_SAMPLE)

    assert event == QuayEvent(
        event="quota_warning", repository=None, namespace="acme", name=None,
        homepage="https://quay.io/organization/acme",
        threshold_percent=80, usage_percent=80, usage_bytes=858993459, limit_bytes=1073741824,
    )
    assert event.is_namespace_event and not event.is_build and not event.is_test
    assert event.subject == "acme"


def test_a_quota_error_over_the_limit_is_parsed():
    event = quota("quota_error")

    assert (event.threshold_percent, event.usage_percent, event.usage_bytes, event.limit_bytes) == (
        100, 105, 1127428915, 1073741824)


def test_a_repository_in_a_quota_body_is_ignored():
    event = parse("quota_warning", QUAY_WARNING_SAMPLE | {"repository": "evil/x"})

    assert (event.repository, event.namespace) == (None, "acme")


@pytest.mark.parametrize("mutate, field, reason", [
    (lambda b: b.pop("namespace"), "namespace", "is required"),
    (lambda b: b.update(namespace=""), "namespace", "must not be empty"),
    (lambda b: b.update(namespace=7), "namespace", "must be a string, not a number"),
    (lambda b: b.update(namespace="ac\nme"), "namespace", "contains a control character ('\\n') at position 2"),
    (lambda b: b.update(namespace="acme/x"), "namespace", "'acme/x' is not a Quay namespace"),
    (lambda b: b.update(namespace=".."), "namespace", "'..' is not a Quay namespace"),
    (lambda b: b.update(homepage=["x"]), "homepage", "must be a string, not a list"),
    (lambda b: b.update(homepage="https://q\x1b/"), "homepage", "contains a control character ('\\x1b')"),
    (lambda b: b.pop("usage_bytes"), "usage_bytes", "is required"),
    (lambda b: b.update(usage_percent="80"), "usage_percent", "must be a whole number, not a string"),
    (lambda b: b.update(threshold_percent=80.5), "threshold_percent", "must be a whole number, not 80.5"),
    (lambda b: b.update(limit_bytes=True), "limit_bytes", "must be a whole number, not a boolean"),
    (lambda b: b.update(limit_bytes=-1), "limit_bytes", "must not be negative (it is -1)"),
])
def test_a_quota_body_quay_never_sends_is_a_payload_error_naming_the_field(mutate, field, reason):
    body = dict(QUAY_WARNING_SAMPLE)
    mutate(body)

    with pytest.raises(PayloadError) as raised:
        parse("quota_warning", body)

    assert raised.value.field == field
    assert reason in raised.value.reason


# Routing


def test_a_namespace_route_with_an_explicit_target_applies():
    routes = parse_toml_routes(QUOTA_ROUTES)

    selection = select_routes(routes, quota())

    assert selection.routes == routes and selection.repository_routed
    assert routes[0].target(quota()) == "acme/infra"


def test_a_target_may_use_the_namespace():
    routes = parse_toml_routes('[[routes]]\nquay = "*/*"\ngithub = "{namespace}/infra"\nevents = ["quota_error"]\n')
    event = quota("quota_error", "corp")

    [planned] = plan_dispatches(event, select_routes(routes, event).routes, b"{}")

    assert planned.target == "corp/infra"


def test_a_route_for_another_namespace_does_not_apply():
    routes = parse_toml_routes(QUOTA_ROUTES.replace("acme/*", "other/*"))

    selection = select_routes(routes, quota())

    assert selection.routes == () and not selection.repository_routed


def test_a_route_without_an_explicit_target_does_not_apply():
    route = Route(quay="acme/*", events=("quota_warning",))  # github = "{namespace}/{name}"

    selection = select_routes((route,), quota())

    assert selection.routes == () and selection.repository_routed
    assert "uses {name}, and a namespace event has no repository name" in selection.reasons[0]


def test_a_route_without_the_quota_event_does_not_apply():
    routes = parse_toml_routes(QUOTA_ROUTES.replace('"quota_warning", ', ""))

    selection = select_routes(routes, quota())

    assert selection.routes == ()
    assert selection.reasons == ("route 'acme/*': event quota_warning is not in ['quota_error']",)


def test_a_route_listing_quota_events_is_accepted_at_start_up():
    [route] = parse_toml_routes(QUOTA_ROUTES)

    assert route == Route(quay="acme/*", github="acme/infra", events=("quota_warning", "quota_error"))


@pytest.mark.parametrize("table, words", [
    ('quay = "acme/*"\nevents = ["quota_warning"]', "github = '{namespace}/{name}' uses {name}"),
    ('quay = "acme/*"\ngithub = "gh/{name}"\nevents = ["build_success", "quota_error"]',
     "github = 'gh/{name}' uses {name}, and a namespace event has no repository name"),
    ('quay = "acme/*"\ngithub = "acme/infra"\nevents = ["quota_warning"]\nbranches = ["main"]',
     "branches and tags do not apply to the namespace event(s) quota_warning"),
    ('quay = "acme/*"\ngithub = "acme/infra"\nevents = ["quota_warning"]\nworkflow = "c.yml"\ninputs = ["sha"]',
     "input 'sha' is not one of namespace, event, url, threshold_percent"),
])
def test_a_quota_route_that_cannot_work_is_refused_at_start_up(table, words):
    with pytest.raises(RouteError) as raised:
        parse_toml_routes("[[routes]]\n" + table + "\n")

    assert words in str(raised.value)
    assert str(raised.value).startswith("ROUTES_FILE, route 1: ")


# What GitHub receives


def test_the_client_payload_carries_the_quota_figures():
    assert client_payload(quota()) == WARNING_PAYLOAD


def test_a_workflow_route_sends_quota_figures_as_inputs_on_the_default_branch():
    [route] = parse_toml_routes(QUOTA_ROUTES + 'workflow = "cleanup.yml"\ninputs = ["namespace", "usage_percent"]\n')

    [planned] = plan_dispatches(quota(), (route,), b"{}")

    assert planned.path == "/repos/acme/infra/actions/workflows/cleanup.yml/dispatches"
    assert planned.body == {"ref": None, "inputs": {"namespace": "acme", "usage_percent": "80"},
                            "return_run_details": True}


def test_a_route_for_repository_and_quota_events_sends_each_the_inputs_it_has():
    [route] = parse_toml_routes(QUOTA_ROUTES.replace('events = [', 'events = ["build_success", ')
                                + 'workflow = "ops.yml"\ninputs = ["sha", "usage_percent"]\n')
    build = QuayEvent(event="build_success", repository="acme/api", namespace="acme", name="api", build_id="b",
                      commit="42d4a62c53350993ea41069e9f2cfdefb0df097d")

    [for_quota] = plan_dispatches(quota(), (route,), b"{}")
    [for_build] = plan_dispatches(build, (route,), b"{}")

    assert for_quota.body == {"ref": None, "inputs": {"usage_percent": "80"}, "return_run_details": True}
    assert for_build.body == {"ref": None, "inputs": {"sha": "42d4a62c53350993ea41069e9f2cfdefb0df097d"},
                              "return_run_details": True}


def test_quota_events_deduplicate_by_body_for_a_window():
    routes = parse_toml_routes(QUOTA_ROUTES)
    [one] = plan_dispatches(quota(), routes, b"body one")
    [two] = plan_dispatches(quota(), routes, b"body two")

    assert one.dedup_key != two.dedup_key and one.dedup_window is not None


# Live, through the real service


@pytest.fixture
def quota_service(start_service, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(QUOTA_ROUTES + '''
[[routes]]
quay = "acme/*"
github = "acme/ops"
events = ["quota_error"]
event_type = "storage-full"
workflow = "cleanup.yml"
inputs = ["namespace", "usage_percent", "limit_bytes"]
''')
    return start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})


@pytest.mark.parametrize("event, event_type", [("quota_warning", "QUAY_QUOTA_WARNING"),
                                                ("quota_error", "QUAY_QUOTA_ERROR")])
def test_a_quota_event_reaches_github_with_its_figures(quota_service, test_pki, github, event, event_type):
    body = sample_body(event, "acme")
    github.repos["acme/ops"] = (200, {"default_branch": "trunk"})

    response = post(quota_service, test_pki, body, event=event)

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"  # stored in the outbox, under the namespace
    dispatches = wait_for_dispatches(github, 2 if event == "quota_error" else 1)
    [sent] = [r for r in dispatches if r.path == "/repos/acme/infra/dispatches"]
    assert sent.json() == {
        "event_type": event_type,
        "client_payload": {
            "namespace": "acme",
            "event": event,
            "url": "https://quay.io/organization/acme",
            "threshold_percent": body["threshold_percent"],
            "usage_percent": body["usage_percent"],
            "usage_bytes": body["usage_bytes"],
            "limit_bytes": body["limit_bytes"],
        },
    }


def test_a_quota_error_runs_a_workflow_with_its_figures_as_inputs(quota_service, test_pki, github):
    github.repos["acme/ops"] = (200, {"default_branch": "trunk"})

    response = post(quota_service, test_pki, sample_body("quota_error", "acme"), event="quota_error")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    assert sorted((d["target"], d["event_type"], d.get("workflow")) for d in response.json()["deliveries"]) == [
        ("acme/infra", "QUAY_QUOTA_ERROR", None), ("acme/ops", "storage-full", "cleanup.yml")]
    [workflow] = [r for r in wait_for_dispatches(github, 2) if "/actions/workflows/" in r.path]
    assert workflow.path == "/repos/acme/ops/actions/workflows/cleanup.yml/dispatches"
    assert workflow.json() == {"ref": "trunk", "inputs": {"namespace": "acme", "usage_percent": "105",
                                                          "limit_bytes": "1073741824"}, "return_run_details": True}


def test_a_quota_event_of_a_namespace_no_route_allows_is_forbidden(quota_service, test_pki, github):
    response = post(quota_service, test_pki, sample_body("quota_warning", "someone-else"), event="quota_warning")

    assert response.status_code == 403
    assert response.json()["error"] == "no route allows Quay namespace 'someone-else'"


def test_a_quota_body_with_a_bad_figure_is_a_400_naming_the_field(quota_service, test_pki):
    body = sample_body("quota_warning", "acme") | {"usage_bytes": "a lot"}

    response = post(quota_service, test_pki, body, event="quota_warning")

    assert response.status_code == 400
    assert response.json()["field"] == "usage_bytes"
    assert response.json()["error"] == "usage_bytes: must be a whole number, not a string"


def wait_for_dispatches(github, count, timeout=10.0):
    """The dispatch requests GitHub received, once there are `count` of them (or the timeout passed)."""
    wait_until(lambda: len(github.dispatches()) >= count, timeout, interval=0.02)
    return github.dispatches()
