"""The outbox: accepted dispatches, committed durably before the 202, deduplicated, claimed for delivery.

SQLite in WAL mode with synchronous=FULL: a commit that returned survives a
power cut. Every worker process and thread opens its own connection; writes
take the database lock up front (BEGIN IMMEDIATE) so that check-then-insert
and claim-then-lease are atomic across processes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .dispatch import DispatchRequest, canonical_json

PENDING, DELIVERED, FAILED, EXPIRED, DRY_RUN = "pending", "delivered", "failed", "expired", "dry_run"
STATUSES = (PENDING, DELIVERED, FAILED, EXPIRED, DRY_RUN)
BUSY_TIMEOUT = 5.0  # seconds a writer waits for the lock before the store counts as unavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    event TEXT NOT NULL,
    quay_repository TEXT NOT NULL,
    build_id TEXT,
    host TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_type TEXT NOT NULL,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    dedup_until REAL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    last_request_id TEXT,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_dedup ON deliveries (dedup_key);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    at REAL NOT NULL,
    http_status INTEGER,
    request_id TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
"""


class StoreUnavailable(Exception):
    """The outbox cannot store anything right now (locked, disk full, unwritable)."""


@dataclass(frozen=True)
class Accepted:
    """A stored delivery, as the 202 answer names it."""

    id: int
    target: str
    event_type: str


@dataclass(frozen=True)
class Delivery:
    """A delivery row, as the deliverer and the CLI see it."""

    id: int
    created_at: float
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


class Outbox:
    """The durable store of deliveries."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database lock from its start."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.OperationalError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            raise StoreUnavailable(str(exc)) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def migrate(self) -> None:
        """Create the schema if it is missing; safe to run at every start, from every worker."""
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def add(
        self, requests: list[DispatchRequest], *, event: str, quay_repository: str,
        build_id: str | None, host: str, dry_run: bool,
    ) -> tuple[list[Accepted], list[str]]:
        """Store the requests that are not duplicates; return them, and the targets that were."""
        now = time.time()
        accepted, duplicates = [], []
        with self._write() as conn:
            for req in requests:
                seen = conn.execute(
                    "SELECT 1 FROM deliveries WHERE dedup_key = ? AND (dedup_until IS NULL OR dedup_until > ?) LIMIT 1",
                    (req.dedup_key, now),
                ).fetchone()
                if seen:
                    duplicates.append(req.target)
                    continue
                cursor = conn.execute(
                    """INSERT INTO deliveries (created_at, updated_at, event, quay_repository, build_id, host,
                           target, kind, event_type, path, body, dedup_key, dedup_until, status, next_attempt_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (now, now, event, quay_repository, build_id, host, req.target, req.kind, req.event_type,
                     req.path, canonical_json(req.body), req.dedup_key,
                     None if req.dedup_window is None else now + req.dedup_window,
                     DRY_RUN if dry_run else PENDING, now),
                )
                accepted.append(Accepted(cursor.lastrowid, req.target, req.event_type))
        return accepted, duplicates

    def claim(self, host: str, lease_seconds: float) -> Delivery | None:
        """Lease the oldest due delivery for `host`, unless one to that host is already in flight.

        GitHub asks for content-creating requests one at a time; holding at most
        one lease per host across all workers keeps to that.
        """
        now = time.time()
        with self._write() as conn:
            busy = conn.execute(
                "SELECT 1 FROM deliveries WHERE host = ? AND status = ? AND lease_until > ? LIMIT 1",
                (host, PENDING, now),
            ).fetchone()
            if busy:
                return None
            row = conn.execute(
                """SELECT * FROM deliveries WHERE host = ? AND status = ? AND next_attempt_at <= ?
                   ORDER BY next_attempt_at, id LIMIT 1""",
                (host, PENDING, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE deliveries SET lease_until = ? WHERE id = ?", (now + lease_seconds, row["id"]))
        return _delivery(row)

    def record(
        self, delivery_id: int, *, status: str, http_status: int | None, request_id: str | None,
        error: str | None, next_attempt_at: float | None = None,
    ) -> None:
        """Record an attempt and the delivery's new status; release its lease."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO attempts (delivery_id, at, http_status, request_id, error) VALUES (?, ?, ?, ?, ?)",
                (delivery_id, now, http_status, request_id, error),
            )
            conn.execute(
                """UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, lease_until = NULL,
                       next_attempt_at = COALESCE(?, next_attempt_at), last_status = ?, last_error = ?,
                       last_request_id = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END
                   WHERE id = ?""",
                (status, now, next_attempt_at, http_status, error, request_id, status, now, delivery_id),
            )

    def list(self, status: str | None = None, limit: int = 50) -> list[Delivery]:
        """The newest deliveries, optionally of one status."""
        conn = self._connection()
        if status:
            rows = conn.execute("SELECT * FROM deliveries WHERE status = ? ORDER BY id DESC LIMIT ?", (status, limit))
        else:
            rows = conn.execute("SELECT * FROM deliveries ORDER BY id DESC LIMIT ?", (limit,))
        return [_delivery(row) for row in rows]

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless a write transaction can be opened now."""
        with self._write():
            pass


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(**{name: row[name] for name in Delivery.__dataclass_fields__})
