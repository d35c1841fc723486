"""The outbox's queries, shared by SQLite and PostgreSQL; each store says how it opens a serialised transaction."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from ..domain.dispatch_request import (
    DELIVERED,
    DRY_RUN,
    EXPIRED,
    FAILED,
    PENDING,
    STATUSES,
    DispatchRequest,
    canonical_json,
)
from . import schema
from .browse import Browse
from .records import Accepted, Delivery, Notification, Run, delivery_of, like_literal, requeue
from .shared import SharedState
from .waking import Waking

# Whether a delivery to a host is being sent (claim() looks before every send).
LEASE_IN_FLIGHT = "SELECT 1 FROM deliveries WHERE host = ? AND status = ? AND lease_until > ? LIMIT 1"


class Outbox(Waking, SharedState, Browse):
    """The durable store of deliveries (and the workers' shared state); subclasses say how to open a serialised
    transaction."""

    ddl = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"}
    skip_locked = ""
    description = ""
    deadline_name = "STORE_TIMEOUT"  # what sets `timeout`, for messages

    def connect(self) -> None:
        """Reach the store now, for a start-up that says what it waits for; StoreUnavailable if it cannot."""

    def restrict_to_owner(self) -> None:
        """Let no other local user read the store, which holds private keys (ACME's). A database server has
        its own access control: nothing to do."""

    @contextmanager
    def _transaction(self, *lock_keys: str) -> Iterator[Run]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Run]:
        """A transaction that only reads: where the store locks writes for the whole file, it takes no such lock."""
        return self._transaction()

    def migrate(self) -> None:
        """Bring the schema to the newest version; safe at every start, from every worker."""
        with self._transaction("schema") as run:
            run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = run("SELECT MAX(version) AS version FROM schema_version").fetchone()["version"] or 0
            for version, statements in enumerate(schema.MIGRATIONS[current:], start=current + 1):
                for statement in statements:
                    run(statement.format(**self.ddl))
                run("INSERT INTO schema_version (version) VALUES (?)", version)

    def add(self, requests: list[DispatchRequest], notification: Notification) -> tuple[list[Accepted], list[str]]:
        """Store the requests of `notification` that are not duplicates; return them, and the targets that were."""
        with self._transaction(*sorted(f"dedup:{r.dedup_key}" for r in requests)) as run:
            return self._insert(run, requests, notification)

    def _insert(self, run: Run, requests: list[DispatchRequest], n: Notification) -> tuple[list[Accepted], list[str]]:
        now = time.time()
        accepted, duplicates = [], []
        for req in requests:
            seen = run(
                "SELECT id FROM deliveries WHERE dedup_key = ? AND (dedup_until IS NULL OR dedup_until > ?) LIMIT 1",
                req.dedup_key, now,
            ).fetchone()
            if seen:
                run("UPDATE deliveries SET duplicates = duplicates + 1 WHERE id = ?", seen["id"])
                duplicates.append(req.target)
                continue
            row = run(
                """INSERT INTO deliveries (created_at, queued_at, updated_at, event, quay_repository, build_id,
                       host, target, kind, event_type, path, body, dedup_key, dedup_until, status, next_attempt_at,
                       branch, tags, commit_sha, notification, recovered)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                now, now, now, n.event, n.quay_repository, n.build_id, n.host, req.target, req.kind, req.event_type,
                req.path, canonical_json(req.body), req.dedup_key,
                None if req.dedup_window is None else now + req.dedup_window,
                DRY_RUN if n.dry_run else PENDING, now, n.branch, " ".join(n.tags) or None, n.commit, n.body,
                int(n.recovered),
            ).fetchone()
            accepted.append(Accepted(row["id"], req.target, req.event_type, req.workflow))
        if accepted and not n.dry_run:
            self._announce(run)
        return accepted, duplicates

    def claim(self, host: str, lease_seconds: float, writes_per_minute: int) -> Delivery | None:
        """Lease the oldest due delivery for `host`, if GitHub's rules for that host allow a write now.

        At most one delivery per host is leased at a time across every worker
        and replica (GitHub asks for writes one at a time), none while the host
        is rate-limited, and no more than `writes_per_minute` a minute (policy.py has the rules).
        """
        now = time.time()
        with self._transaction(f"host:{host}") as run:
            if run(LEASE_IN_FLIGHT, host, PENDING, now).fetchone():
                return None
            if run("SELECT 1 FROM hosts WHERE host = ? AND paused_until > ?", host, now).fetchone():
                return None
            recent = run("SELECT COUNT(*) AS n FROM attempts WHERE host = ? AND at > ?", host, now - 60).fetchone()
            if recent["n"] >= writes_per_minute:
                return None
            row = run(
                """SELECT * FROM deliveries WHERE host = ? AND status = ? AND next_attempt_at <= ?
                   ORDER BY next_attempt_at, id LIMIT 1""" + self.skip_locked,
                host, PENDING, now,
            ).fetchone()
            if row is None:
                return None
            run("UPDATE deliveries SET lease_until = ? WHERE id = ?", now + lease_seconds, row["id"])
        return delivery_of(row)

    def record(
        self, delivery: Delivery, *, status: str, http_status: int | None, request_id: str | None,
        error: str | None, next_attempt_at: float | None = None, pause_host_until: float | None = None,
        duration_ms: int | None = None, run_id: int | None = None, run_url: str | None = None,
    ) -> None:
        """Record an attempt and the delivery's new status; release its lease.

        A delivered attempt proves the host is back: retries of that host
        waiting out a backoff are brought forward, to go one at a time.
        A rate-limited one pauses every delivery to the host until it may retry.
        """
        now = time.time()
        with self._transaction(f"host:{delivery.host}") as run:
            run("""INSERT INTO attempts (delivery_id, host, at, http_status, request_id, error, result, duration_ms)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""", delivery.id, delivery.host, now, http_status, request_id,
                error, "retry" if status == PENDING else status, duration_ms)
            run(
                """UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, lease_until = NULL,
                       next_attempt_at = COALESCE(?, next_attempt_at), last_status = ?, last_error = ?,
                       last_request_id = ?, delivered_at = ?, run_id = COALESCE(?, run_id),
                       run_url = COALESCE(?, run_url)
                   WHERE id = ?""",
                status, now, next_attempt_at, http_status, error, request_id,
                now if status == DELIVERED else None, run_id, run_url, delivery.id,
            )
            if status == DELIVERED:
                run("UPDATE deliveries SET next_attempt_at = ? WHERE host = ? AND status = ? AND next_attempt_at > ?",
                    now, delivery.host, PENDING, now)
            if pause_host_until is not None:
                run("""INSERT INTO hosts (host, paused_until) VALUES (?, ?)
                       ON CONFLICT (host) DO UPDATE SET paused_until = excluded.paused_until""",
                    delivery.host, pause_host_until)

    def list(self, status: str | None = None, limit: int = 50) -> list[Delivery]:
        """The newest deliveries, optionally of one status."""
        with self._transaction() as run:
            if status:
                rows = run("SELECT * FROM deliveries WHERE status = ? ORDER BY id DESC LIMIT ?", status, limit)
            else:
                rows = run("SELECT * FROM deliveries ORDER BY id DESC LIMIT ?", limit)
            return [delivery_of(row) for row in rows.fetchall()]

    def known(self, dedup_keys: list[str]) -> set[str]:
        """Which of `dedup_keys` the outbox holds a delivery for that still counts (its duplicates are refused)."""
        with self._transaction() as run:
            return {key for key in dict.fromkeys(dedup_keys) if run(
                "SELECT 1 FROM deliveries WHERE dedup_key = ? AND (dedup_until IS NULL OR dedup_until > ?) LIMIT 1",
                key, time.time()).fetchone()}

    def received_push(self, repository: str, tag: str, since: float) -> bool:
        """Whether the relay took a repo_push of `repository` naming `tag` since `since` (epoch seconds)."""
        with self._transaction() as run:
            return run("""SELECT 1 FROM deliveries WHERE quay_repository = ? AND event = 'repo_push'
                              AND created_at >= ? AND ' ' || tags || ' ' LIKE ? ESCAPE '\\' LIMIT 1""",
                       repository, since, f"% {like_literal(tag)} %").fetchone() is not None

    def attempts(self, delivery_id: int) -> list[dict]:
        """Every attempt of a delivery, oldest first."""
        with self._transaction() as run:
            rows = run("""SELECT at, result, http_status, request_id, error, duration_ms FROM attempts
                          WHERE delivery_id = ? ORDER BY at""", delivery_id).fetchall()
        return [dict(row) for row in rows]

    def redeliver(self, ids: list[int] | None = None) -> tuple[list[int], dict[int, str]]:
        """Queue deliveries again (by id, or every failed and expired one when `ids` is None).

        Returns the ids queued, and for each id that was not, why.
        """
        now = time.time()
        refused: dict[int, str] = {}
        with self._transaction() as run:
            if ids is None:
                rows = run("SELECT id, status FROM deliveries WHERE status IN (?, ?)", FAILED, EXPIRED).fetchall()
            else:
                marks = ", ".join("?" * len(ids))
                rows = run(f"SELECT id, status FROM deliveries WHERE id IN ({marks})", *ids).fetchall()
                found = {row["id"] for row in rows}
                refused.update({i: "no such delivery" for i in ids if i not in found})
            queued = []
            for row in rows:
                if row["status"] == PENDING:
                    refused[row["id"]] = "already pending"
                elif row["status"] == DRY_RUN:
                    refused[row["id"]] = "recorded in dry-run mode; it was never meant to be sent"
                else:
                    queued.append(row["id"])
            requeue(run, queued, now)
            self._announce(run)
        return sorted(queued), refused

    def prune(self, older_than: float) -> int:
        """Delete delivered and dry-run deliveries last updated before `older_than`; return how many."""
        with self._read() as run:  # an idle store is not locked for writing to find nothing
            if not run("SELECT 1 FROM deliveries WHERE status IN (?, ?) AND updated_at < ? LIMIT 1",
                       DELIVERED, DRY_RUN, older_than).fetchone():
                return 0
        with self._transaction() as run:
            cursor = run("DELETE FROM deliveries WHERE status IN (?, ?) AND updated_at < ?",
                         DELIVERED, DRY_RUN, older_than)
            return cursor.rowcount

    def counts(self) -> dict[str, int]:
        """How many deliveries have each status."""
        with self._read() as run:
            rows = run("SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {row["status"]: row["n"] for row in rows}

    def oldest_pending(self) -> float | None:
        """When the oldest delivery still to send was queued (epoch seconds), or None."""
        with self._read() as run:
            row = run("SELECT MIN(queued_at) AS oldest FROM deliveries WHERE status = ?", PENDING).fetchone()
        return row["oldest"]

    def close(self) -> None:
        """Close this thread's connection (the next use opens a new one), and let the watchdog's thread end."""
        self._watchdog.stop()
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless a notification could be committed now.

        A real write of the pages a notification writes: a delivery row inserted and
        deleted in one transaction, which leaves nothing behind.
        """
        with self._transaction() as run:
            row = run("""INSERT INTO deliveries (created_at, queued_at, updated_at, event, quay_repository, host,
                             target, kind, event_type, path, body, dedup_key, status, next_attempt_at)
                         VALUES (0, 0, 0, '', '', '', '', '', '', '', '', '', 'probe', 0) RETURNING id""").fetchone()
            run("DELETE FROM deliveries WHERE id = ?", row["id"])

    def record_dispatched(self, requests: list[DispatchRequest], outcomes: list, notification: Notification) -> None:
        """Record requests that were sent to GitHub directly, while the outbox could not take them, as delivered.

        `outcomes` are GitHub's answers (policy.Outcome), one per request. A request the
        outbox holds already (its commit landed after all) is marked delivered unless
        it was delivered meanwhile; so a retry from Quay is a duplicate, and nothing is sent twice.
        """
        now = time.time()
        with self._transaction(*sorted(f"dedup:{r.dedup_key}" for r in requests)) as run:
            for req, outcome in zip(requests, outcomes, strict=True):
                row = run("SELECT id, status FROM deliveries WHERE dedup_key = ? ORDER BY id DESC LIMIT 1",
                          req.dedup_key).fetchone()
                if row is None:
                    [accepted], _ = self._insert(run, [req], notification)
                    delivery_id = accepted.id
                elif row["status"] == PENDING:
                    delivery_id = row["id"]
                else:
                    continue
                run("""INSERT INTO attempts (delivery_id, host, at, http_status, request_id, error, result,
                           duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    delivery_id, notification.host, now, outcome.http_status, outcome.request_id,
                    "sent directly: the outbox could not take it", DELIVERED, outcome.duration_ms)
                run("""UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, lease_until = NULL,
                           last_status = ?, last_error = NULL, last_request_id = ?, delivered_at = ?,
                           run_id = ?, run_url = ?
                       WHERE id = ?""",
                    DELIVERED, now, outcome.http_status, outcome.request_id, now, outcome.run_id, outcome.run_url,
                    delivery_id)
