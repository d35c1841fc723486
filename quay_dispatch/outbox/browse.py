"""What the operator's page reads from the outbox and does to it: a filter's page of deliveries, one delivery
whole, the last day by the hour, a filter's redelivery, the latest refused calls (kept capped).

Every list is a keyset page on the id, newest first, on an index of each filter's column: a page costs the same
with a hundred deliveries or a hundred thousand.
"""

from __future__ import annotations

import re
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields

from .records import REQUEUABLE, Run, requeue, row_as

KEPT_REFUSALS = 1000
_HOUR = "CAST({} AS BIGINT) / 3600"  # the hour of an epoch time, in both stores (PostgreSQL rounds the second)
_HEX = re.compile(r"[0-9a-f]{4,40}")


@dataclass(frozen=True)
class Filter:
    """Which deliveries: each field given narrows; `q` is a build id, or a commit's first characters (4 or more)."""

    status: str | None = None
    target: str | None = None
    quay_repository: str | None = None
    event: str | None = None
    q: str | None = None

    def where(self) -> tuple[str, list]:
        """The SQL condition and its parameters."""
        clauses, params = ["1 = 1"], []
        for column in ("status", "target", "quay_repository", "event"):
            if value := getattr(self, column):
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.q:
            if _HEX.fullmatch(self.q.lower()):  # a range, so that the commit's index serves a prefix
                clauses.append("(build_id = ? OR (commit_sha >= ? AND commit_sha < ?))")
                params += [self.q, self.q.lower(), self.q.lower() + "g"]
            else:
                clauses.append("build_id = ?")
                params.append(self.q)
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class Listed:
    """A delivery as the page's list shows it."""

    id: int
    created_at: float
    quay_repository: str
    event: str
    build_id: str | None
    branch: str | None
    tags: str | None
    commit_sha: str | None
    target: str
    kind: str
    path: str  # a workflow dispatch's names the workflow
    status: str
    attempts: int
    last_status: int | None
    next_attempt_at: float
    run_url: str | None
    recovered: int  # 1: recovered from Quay's lists after Quay dropped the event


@dataclass(frozen=True)
class Detail(Listed):
    """One delivery whole: what was sent, each attempt, the notification it came from."""

    queued_at: float
    delivered_at: float | None
    event_type: str
    body: str
    last_error: str | None
    last_request_id: str | None
    notification: str | None
    duplicates: int
    run_id: int | None


@dataclass(frozen=True)
class Attempt:
    at: float
    result: str | None  # None for an attempt recorded before schema version 4
    http_status: int | None
    request_id: str | None
    error: str | None
    duration_ms: int | None


@dataclass(frozen=True)
class RefusedCall:
    """A call to /incoming that was refused: when, from where, the answer and why, the certificate's names."""

    at: float
    caller: str
    status: int
    event: str | None
    reason: str
    names: str | None


def _columns(kind) -> str:
    return ", ".join(f.name for f in fields(kind))


class Browse:
    """The page's reads and writes; the outbox (store.Outbox) provides the transaction."""

    def _transaction(self, *lock_keys: str) -> AbstractContextManager[Run]:
        raise NotImplementedError

    def page(self, where: Filter, before: int | None = None, size: int = 50) -> tuple[list[Listed], int | None]:
        """Up to `size` deliveries that `where` selects, newest first, older than id `before`; and the id to pass
        as `before` for the next page, or None on the last."""
        condition, params = where.where()
        if before is not None:
            condition, params = condition + " AND id < ?", [*params, before]
        with self._transaction() as run:
            rows = run(f"SELECT {_columns(Listed)} FROM deliveries WHERE {condition} ORDER BY id DESC LIMIT ?",
                       *params, size + 1).fetchall()
        listed = [row_as(Listed, row) for row in rows[:size]]
        return listed, listed[-1].id if len(rows) > size else None

    def detail(self, delivery_id: int) -> tuple[Detail, list[Attempt]] | None:
        """One delivery and each of its attempts (oldest first), or None."""
        with self._transaction() as run:
            row = run(f"SELECT {_columns(Detail)} FROM deliveries WHERE id = ?", delivery_id).fetchone()
            if row is None:
                return None
            attempts = run(f"SELECT {_columns(Attempt)} FROM attempts WHERE delivery_id = ? ORDER BY at",
                           delivery_id).fetchall()
        return row_as(Detail, row), [row_as(Attempt, a) for a in attempts]

    def redeliverable(self, where: Filter) -> tuple[dict[str, int], int]:
        """How many deliveries that `where` selects would be queued again, by status; and the newest one's id,
        which bounds what redeliver_selected() takes (deliveries that came since were not confirmed)."""
        condition, params = where.where()
        marks = ", ".join("?" * len(REQUEUABLE))
        with self._transaction() as run:
            rows = run(f"""SELECT status, COUNT(*) AS n, MAX(id) AS newest FROM deliveries
                           WHERE {condition} AND status IN ({marks}) GROUP BY status""",
                       *params, *REQUEUABLE).fetchall()
        return {row["status"]: row["n"] for row in rows}, max((row["newest"] for row in rows), default=0)

    def redeliver_selected(self, where: Filter, upto: int, confirmed: int) -> list[int] | None:
        """Queue again what `where` selects up to id `upto`, if that is still the `confirmed` count; else nothing,
        and None (the selection changed since the operator saw it)."""
        condition, params = where.where()
        marks = ", ".join("?" * len(REQUEUABLE))
        with self._transaction() as run:
            ids = [row["id"] for row in run(
                f"SELECT id FROM deliveries WHERE {condition} AND id <= ? AND status IN ({marks})",
                *params, upto, *REQUEUABLE).fetchall()]
            if len(ids) != confirmed:
                return None
            requeue(run, ids, time.time())
            self._announce(run)
        return sorted(ids)

    def hourly(self, hours: int = 24, now: float | None = None) -> list[dict]:
        """The last `hours` hours, oldest first: deliveries accepted, attempts delivered and failed for good,
        and the mean time from acceptance to delivery of those delivered, per hour (counted by the store)."""
        now = time.time() if now is None else now
        first = int(now // 3600) - hours + 1
        buckets = [{"hour": 3600.0 * (first + i), "accepted": 0, "delivered": 0, "failed": 0, "latency": None}
                   for i in range(hours)]
        with self._transaction() as run:
            accepted = run(f"SELECT {_HOUR.format('created_at')} AS h, COUNT(*) AS n FROM deliveries "
                           "WHERE created_at >= ? GROUP BY 1", 3600 * first).fetchall()
            ended = run(f"""SELECT {_HOUR.format('a.at')} AS h, a.result, COUNT(*) AS n,
                                   AVG(a.at - d.queued_at) AS latency
                            FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                            WHERE a.at >= ? AND a.result IN ('delivered', 'failed', 'expired') GROUP BY 1, 2""",
                        3600 * first).fetchall()
        for row in accepted:
            buckets[min(max(row["h"] - first, 0), hours - 1)]["accepted"] += row["n"]
        for row in ended:
            bucket = buckets[min(max(row["h"] - first, 0), hours - 1)]
            if row["result"] == "delivered":
                bucket["delivered"] += row["n"]
                bucket["latency"] = max(0.0, row["latency"])
            else:
                bucket["failed"] += row["n"]
        return buckets

    def last_attempt(self) -> Attempt | None:
        """GitHub's latest answer to a delivery, or None."""
        with self._transaction() as run:
            row = run(f"SELECT {_columns(Attempt)} FROM attempts ORDER BY at DESC LIMIT 1").fetchone()
        return None if row is None else row_as(Attempt, row)

    def keep_refusals(self, refused: list[RefusedCall]) -> None:
        """Add refused calls, and forget all but the newest KEPT_REFUSALS."""
        if not refused:
            return
        with self._transaction("refusals") as run:
            for call in refused:
                run("INSERT INTO refusals (at, caller, status, event, reason, names) VALUES (?, ?, ?, ?, ?, ?)",
                    call.at, call.caller, call.status, call.event, call.reason, call.names)
            newest = run("SELECT MAX(id) AS newest FROM refusals").fetchone()["newest"]
            run("DELETE FROM refusals WHERE id <= ?", newest - KEPT_REFUSALS)

    def refusals(self, limit: int = 100) -> list[RefusedCall]:
        """The latest refused calls, newest first."""
        with self._transaction() as run:
            rows = run(f"SELECT {_columns(RefusedCall)} FROM refusals ORDER BY id DESC LIMIT ?", limit).fetchall()
        return [row_as(RefusedCall, row) for row in rows]
