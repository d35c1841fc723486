"""The domain: what GitHub receives for an event, and what identifies a duplicate."""

from quay_dispatch.domain.plan import BODY_DEDUP_WINDOW, client_payload, plan_dispatches
from quay_dispatch.domain.quay import QuayEvent
from quay_dispatch.domain.routes import parse_inline_routes

EVENT = QuayEvent(event="build_success", repository="acme/api", namespace="acme", name="api", build_id="b-1",
                  commit="42d4a62c53350993ea41069e9f2cfdefb0df097d", ref="refs/heads/main", tags=("latest",),
                  docker_url="quay.io/acme/api", homepage="https://quay.io/repository/acme/api/build/b-1")


def test_client_payload_has_at_most_ten_keys_and_the_original_text():
    payload = client_payload(EVENT)

    assert len(payload) == 10
    assert payload["text"] == "42d4a62"


def test_one_request_per_distinct_target():
    routes = parse_inline_routes("acme/*; acme/api; acme/api=acme/api-server")

    planned = plan_dispatches(EVENT, routes, b"{}")

    assert [p.target for p in planned] == ["acme/api", "acme/api-server"]
    assert planned[0].path == "/repos/acme/api/dispatches"
    assert planned[0].body == {"event_type": "QUAY_BUILD_SUCCESS", "client_payload": client_payload(EVENT)}


def test_build_events_deduplicate_by_build_forever_others_by_body_for_a_window():
    routes = parse_inline_routes("acme/*")
    [build] = plan_dispatches(EVENT, routes, b"body one")
    [same_build] = plan_dispatches(EVENT, routes, b"body two")
    push = QuayEvent(event="repo_push", repository="acme/api", namespace="acme", name="api")
    [push_one] = plan_dispatches(push, routes, b"body one")
    [push_two] = plan_dispatches(push, routes, b"body two")

    assert build.dedup_key == same_build.dedup_key and build.dedup_window is None
    assert push_one.dedup_key != push_two.dedup_key and push_one.dedup_window == BODY_DEDUP_WINDOW
