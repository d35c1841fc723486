"""The domain: a Quay event and its routes become GitHub dispatch requests. Pure functions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .quay import QuayEvent
from .routes import Route

REPOSITORY_DISPATCH = "repository_dispatch"
# Quay retries a call whose answer it missed within minutes; an identical body
# for the same target within this window is the same notification.
BODY_DEDUP_WINDOW = 600.0


@dataclass(frozen=True)
class DispatchRequest:
    """One request to send to GitHub, with what identifies it for deduplication."""

    target: str
    kind: str
    event_type: str
    path: str
    body: dict
    dedup_key: str
    dedup_window: float | None  # None: a build event is the same forever


def client_payload(event: QuayEvent) -> dict:
    """The client_payload GitHub receives: 10 keys (GitHub's maximum), unknown values null."""
    return {
        "text": event.commit[:7] if event.commit else None,  # what the original service sent
        "sha": event.commit,
        "ref": event.ref,
        "branch": event.branch,
        "tags": list(event.tags),
        "image": event.docker_url,
        "build_id": event.build_id,
        "quay_repository": event.repository,
        "event": event.event,
        "url": event.homepage,
    }


def plan_dispatches(event: QuayEvent, routes: tuple[Route, ...], body: bytes) -> list[DispatchRequest]:
    """One request per distinct target among `routes` (already selected for `event`)."""
    requests: dict[str, DispatchRequest] = {}
    payload = client_payload(event)
    body_hash = hashlib.sha256(body).hexdigest()
    for route in routes:
        target = route.target(event)
        if target in requests:
            continue
        event_type = route.event_type_for(event)
        if event.is_build and not event.is_test:
            identity, window = f"build|{event.event}|{event.build_id}", None
        else:
            identity, window = f"body|{event.event}|{body_hash}", BODY_DEDUP_WINDOW
        key_source = f"{identity}|{target}|{REPOSITORY_DISPATCH}|"
        requests[target] = DispatchRequest(
            target=target,
            kind=REPOSITORY_DISPATCH,
            event_type=event_type,
            path=f"/repos/{target}/dispatches",
            body={"event_type": event_type, "client_payload": payload},
            dedup_key=hashlib.sha256(key_source.encode()).hexdigest(),
            dedup_window=window,
        )
    return list(requests.values())


def canonical_json(body: dict) -> str:
    """The exact JSON text stored and sent, so that what is recorded is what GitHub receives."""
    return json.dumps(body, separators=(",", ":"), sort_keys=False)
