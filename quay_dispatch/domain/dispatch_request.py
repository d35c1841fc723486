"""What one dispatch to GitHub is, as the domain plans it, the outbox stores it and the client sends it, and
what becomes of it (its statuses).

A leaf: it imports nothing of the service, so every step of the request's path can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

REPOSITORY_DISPATCH = "repository_dispatch"
WORKFLOW_DISPATCH = "workflow_dispatch"
RUN_DETAILS = "return_run_details"  # asks GitHub (since 2026-02-19) to answer a workflow_dispatch with its run
# What became of a dispatch: the deliverer's policy decides it, the outbox keeps it, the page filters by it.
PENDING, DELIVERED, FAILED, EXPIRED, DRY_RUN = "pending", "delivered", "failed", "expired", "dry_run"
STATUSES = (PENDING, DELIVERED, FAILED, EXPIRED, DRY_RUN)


@dataclass(frozen=True)
class DispatchRequest:
    """One request to send to GitHub, with what identifies it for deduplication."""

    target: str
    kind: str
    event_type: str
    workflow: str | None
    path: str
    body: dict
    dedup_key: str
    dedup_window: float | None  # None: a build event is the same forever


def canonical_json(body: dict) -> str:
    """The exact JSON text stored and sent, so that what is recorded is what GitHub receives."""
    return json.dumps(body, separators=(",", ":"), sort_keys=False)
