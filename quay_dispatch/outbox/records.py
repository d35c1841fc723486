"""What the outbox stores and answers: the notification kept beside each dispatch, the rows (a delivery's
statuses are the domain's, in dispatch_request.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from ..domain.dispatch_request import DELIVERED, EXPIRED, FAILED, PENDING

REQUEUABLE = (DELIVERED, FAILED, EXPIRED)  # what redeliver may queue again: not pending, never dry-run
DEFAULT_TIMEOUT = 2.0  # seconds a transaction may take, locks included (STORE_TIMEOUT)

Run = Callable[..., object]  # run(sql, *params) -> cursor, inside a transaction


class StoreUnavailable(Exception):
    """The outbox cannot store anything right now (locked, disk full, unreachable)."""


@dataclass(frozen=True)
class Notification:
    """What the outbox keeps of the Quay notification beside each dispatch it asked for."""

    event: str  # Quay's event name: build_success, repo_push, quota_warning, ...
    quay_repository: str  # "namespace/name", or the namespace of a quota event
    build_id: str | None
    host: str  # the GitHub API host the dispatches go to
    dry_run: bool
    branch: str | None = None
    tags: tuple[str, ...] = ()
    commit: str | None = None
    body: str | None = None  # Quay's notification as received, for the operator's page
    recovered: bool = False  # recovered from Quay's lists after Quay dropped it (quay_side/recover.py)


@dataclass(frozen=True)
class Accepted:
    """A stored delivery, as the 202 answer names it."""

    id: int
    target: str
    event_type: str
    workflow: str | None = None


@dataclass(frozen=True)
class Delivery:
    """A delivery row, as the deliverer and the CLI see it."""

    id: int
    created_at: float
    queued_at: float
    event: str
    quay_repository: str
    host: str
    target: str
    kind: str
    event_type: str
    path: str
    body: str
    status: str
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    last_request_id: str | None
    delivered_at: float | None
    run_url: str | None  # the workflow run GitHub started, for a workflow_dispatch it named one for
    recovered: bool  # recovered from Quay's lists, not sent by Quay


def row_as(kind, row):
    """The dataclass `kind` that a row holds (a row with a column for each of its fields)."""
    return kind(**{f.name: row[f.name] for f in fields(kind)})


def delivery_of(row) -> Delivery:
    """The Delivery a `deliveries` row holds."""
    return replace(row_as(Delivery, row), recovered=bool(row["recovered"]))


def requeue(run: Run, ids: list[int], now: float) -> None:
    """Queue deliveries again, from now: their expiry counts from now too."""
    for delivery_id in ids:
        run("""UPDATE deliveries SET status = ?, queued_at = ?, updated_at = ?, next_attempt_at = ?,
                   lease_until = NULL WHERE id = ?""", PENDING, now, now, now, delivery_id)


def like_literal(text: str) -> str:
    """`text` matched as itself in a LIKE pattern with ESCAPE '\\' (a name may hold `_`, LIKE's one-character
    wildcard, or `%`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
