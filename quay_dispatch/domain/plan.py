"""The domain: a Quay event and its routes become GitHub dispatch requests. Pure functions."""

from __future__ import annotations

import hashlib

from .dispatch_request import REPOSITORY_DISPATCH, RUN_DETAILS, WORKFLOW_DISPATCH, DispatchRequest
from .quay import QUOTA_FIGURES, QuayEvent
from .routes import RECOVERED_INPUT, Route, template_fields

# Quay retries a call whose answer it missed within minutes; an identical body
# for the same target within this window is the same notification.
BODY_DEDUP_WINDOW = 600.0


def client_payload(quay_event: QuayEvent) -> dict:
    """The client_payload GitHub receives: at most 10 keys (GitHub's maximum), unknown values null."""
    if quay_event.is_namespace_event:
        return {
            "namespace": quay_event.namespace,
            "event": quay_event.event,
            "url": quay_event.homepage,
            **{figure: getattr(quay_event, figure) for figure in QUOTA_FIGURES},
        }
    return {
        "text": quay_event.commit[:7] if quay_event.commit else None,  # what the original service sent
        "sha": quay_event.commit,
        "ref": quay_event.ref,
        "branch": quay_event.branch,
        "tags": list(quay_event.tags),
        "image": quay_event.docker_url,
        "build_id": quay_event.build_id,
        "quay_repository": quay_event.repository,
        "event": quay_event.event,
        "url": quay_event.homepage,
    }


def plan_dispatches(quay_event: QuayEvent, routes: tuple[Route, ...], body: bytes,
                    recovered: str | None = None) -> list[DispatchRequest]:
    """One request per distinct target and workflow among `routes` (already selected for `event`).

    `recovered`: for an event the relay recovered from Quay's lists (quay_side/recover.py), what makes it the same
    event forever (a push's repository, tag and digest); a build is the same build by its id whoever sent it."""
    requests: dict[tuple, DispatchRequest] = {}
    payload = client_payload(quay_event)
    inputs = payload | {RECOVERED_INPUT: "true" if recovered else "false"}
    body_hash = hashlib.sha256(body).hexdigest()
    if quay_event.is_build and not quay_event.is_test:
        identity, window = f"build|{quay_event.event}|{quay_event.build_id}", None
    elif recovered:
        identity, window = f"recovered|{quay_event.event}|{recovered}", None
    else:
        identity, window = f"body|{quay_event.event}|{body_hash}", BODY_DEDUP_WINDOW
    for route in routes:
        target = route.target(quay_event)
        kind = WORKFLOW_DISPATCH if route.workflow else REPOSITORY_DISPATCH
        if (target, kind, route.workflow) in requests:
            continue
        event_type = route.event_type_for(quay_event)
        if route.workflow:
            path = f"/repos/{target}/actions/workflows/{route.workflow}/dispatches"
            request_body = workflow_body(route, inputs)
        else:
            path = f"/repos/{target}/dispatches"
            request_body = {"event_type": event_type, "client_payload": payload}
        key_source = f"{identity}|{target}|{kind}|{route.workflow or ''}"
        requests[(target, kind, route.workflow)] = DispatchRequest(
            target=target,
            kind=kind,
            event_type=event_type,
            workflow=route.workflow,
            path=path,
            body=request_body,
            dedup_key=hashlib.sha256(key_source.encode()).hexdigest(),
            dedup_window=window,
        )
    return list(requests.values())


def workflow_body(route: Route, payload: dict) -> dict:
    """A workflow_dispatch body: the route's ref and inputs, from the client_payload's values.

    A ref whose values are unknown (a manual build has no branch, a namespace event has
    none at all) is left null, for the deliverer to fill with the repository's default
    branch. Inputs are strings (lists comma-joined); an unknown value is left out, so that
    the workflow's default applies.
    """
    fields = template_fields(route.ref)
    ref = None if any(payload.get(f) is None for f in fields) else route.ref.format(**payload)
    inputs = {}
    for name in route.inputs:
        value = payload.get(name)
        if value is not None:
            inputs[name] = ",".join(value) if isinstance(value, list) else str(value)
    return {"ref": ref} | ({"inputs": inputs} if inputs else {}) | {RUN_DETAILS: True}
