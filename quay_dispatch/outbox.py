"""The outbox: accepted dispatches, committed durably before the 202, deduplicated, claimed for delivery.

Two stores share every query: SQLite (one host; WAL mode with synchronous=FULL,
so a commit that returned survives a power cut) and PostgreSQL (several
replicas). Writes that must not interleave across processes are serialised
on a key: SQLite's BEGIN IMMEDIATE takes the database lock, PostgreSQL takes
a transaction-scoped advisory lock on that key, and rows are claimed with
FOR UPDATE SKIP LOCKED.

Every transaction ends within the outbox's `timeout` (STORE_TIMEOUT), whatever the
store does: a watchdog interrupts it at its deadline (SQLite's interrupt; for
PostgreSQL, the connection's socket is shut, since a server that stops answering
never fires its own timeouts). Any failure of the store is a StoreUnavailable
with the store's reason.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from .dispatch import DispatchRequest, canonical_json

PENDING, DELIVERED, FAILED, EXPIRED, DRY_RUN = "pending", "delivered", "failed", "expired", "dry_run"
STATUSES = (PENDING, DELIVERED, FAILED, EXPIRED, DRY_RUN)
DEFAULT_TIMEOUT = 2.0  # seconds a transaction may take, locks included (STORE_TIMEOUT)
SLOW = 1.0  # seconds: a transaction slower than this is logged as a warning, with its cause
WATCHDOG_TICK = 0.1  # seconds between the watchdog's looks at transactions in flight
GITHUB_WRITES_PER_MINUTE = 80  # GitHub's limit on content-creating requests

# Whether a delivery to a host is being sent (claim() looks before every send).
LEASE_IN_FLIGHT = "SELECT 1 FROM deliveries WHERE host = ? AND status = ? AND lease_until > ? LIMIT 1"

# Schema versions, applied in order at start-up; {id} and {real} are per database.
MIGRATIONS = [
    [
        """CREATE TABLE deliveries (
            id {id},
            created_at {real} NOT NULL,
            queued_at {real} NOT NULL,
            updated_at {real} NOT NULL,
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
            dedup_until {real},
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {real} NOT NULL,
            lease_until {real},
            last_status INTEGER,
            last_error TEXT,
            last_request_id TEXT,
            delivered_at {real}
        )""",
        "CREATE INDEX deliveries_dedup ON deliveries (dedup_key)",
        "CREATE INDEX deliveries_due ON deliveries (host, status, next_attempt_at)",
        "CREATE INDEX deliveries_status ON deliveries (status, id)",
        """CREATE TABLE attempts (
            delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
            host TEXT NOT NULL,
            at {real} NOT NULL,
            http_status INTEGER,
            request_id TEXT,
            error TEXT
        )""",
        "CREATE INDEX attempts_delivery ON attempts (delivery_id)",
        "CREATE INDEX attempts_host_at ON attempts (host, at)",
        "CREATE TABLE hosts (host TEXT PRIMARY KEY, paused_until {real} NOT NULL)",
    ],
    [
        # claim() looks for a lease in flight on every look: without this index, that
        # read every pending delivery of the host (8 ms for 10 000, with the write lock held).
        "CREATE INDEX deliveries_leased ON deliveries (host, lease_until) WHERE lease_until IS NOT NULL",
    ],
]


GROUP_COMMIT_MAX = 64  # notifications committed together at most

log = logging.getLogger("quay_dispatch.outbox")


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


Run = Callable[..., object]  # run(sql, *params) -> cursor, inside a transaction


@dataclass
class _PendingAdd:
    """One request's notification, waiting for the group commit that will hold it."""

    requests: list[DispatchRequest]
    notification: Notification
    done: threading.Event = field(default_factory=threading.Event)  # set when committed, or to lead
    leads: bool = False  # this request's thread commits the queue
    result: tuple[list[Accepted], list[str]] | None = None
    error: Exception | None = None


class _Watchdog:
    """Interrupts transactions still running at their deadline; one thread per outbox, started on first use.

    It looks every WATCHDOG_TICK instead of being woken per transaction: nothing
    to do on the request path but two dictionary writes.
    """

    def __init__(self):
        self._running: dict[object, tuple[float, Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @contextmanager
    def guard(self, deadline: float, interrupt: Callable[[], None]) -> Iterator[None]:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="outbox-watchdog", daemon=True)
                    self._thread.start()
        key = object()  # this transaction's own: a late look cannot interrupt the thread's next one
        self._running[key] = (deadline, interrupt)
        try:
            yield
        finally:
            self._running.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_TICK)
            now = time.monotonic()
            for key, (deadline, interrupt) in list(self._running.items()):
                if deadline <= now and self._running.pop(key, None) is not None:
                    try:
                        interrupt()
                    except Exception:  # the connection may be gone already
                        log.debug("interrupting a transaction failed", exc_info=True)


class Outbox:
    """The durable store of deliveries; subclasses say how to open a serialised transaction."""

    ddl = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"}
    skip_locked = ""
    description = ""

    @contextmanager
    def _transaction(self, *lock_keys: str) -> Iterator[Run]:
        raise NotImplementedError

    def migrate(self) -> None:
        """Bring the schema to the newest version; safe at every start, from every worker."""
        with self._transaction("schema") as run:
            run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = run("SELECT MAX(version) AS version FROM schema_version").fetchone()["version"] or 0
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
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
                "SELECT 1 FROM deliveries WHERE dedup_key = ? AND (dedup_until IS NULL OR dedup_until > ?) LIMIT 1",
                req.dedup_key, now,
            ).fetchone()
            if seen:
                duplicates.append(req.target)
                continue
            row = run(
                """INSERT INTO deliveries (created_at, queued_at, updated_at, event, quay_repository, build_id,
                       host, target, kind, event_type, path, body, dedup_key, dedup_until, status, next_attempt_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                now, now, now, n.event, n.quay_repository, n.build_id, n.host, req.target, req.kind, req.event_type,
                req.path, canonical_json(req.body), req.dedup_key,
                None if req.dedup_window is None else now + req.dedup_window,
                DRY_RUN if n.dry_run else PENDING, now,
            ).fetchone()
            accepted.append(Accepted(row["id"], req.target, req.event_type, req.workflow))
        return accepted, duplicates

    def claim(self, host: str, lease_seconds: float) -> Delivery | None:
        """Lease the oldest due delivery for `host`, if GitHub's rules for that host allow a write now.

        At most one delivery per host is leased at a time across every worker
        and replica (GitHub asks for writes one at a time), none while the host
        is rate-limited, and no more than GITHUB_WRITES_PER_MINUTE a minute.
        """
        now = time.time()
        with self._transaction(f"host:{host}") as run:
            if run(LEASE_IN_FLIGHT, host, PENDING, now).fetchone():
                return None
            if run("SELECT 1 FROM hosts WHERE host = ? AND paused_until > ?", host, now).fetchone():
                return None
            recent = run("SELECT COUNT(*) AS n FROM attempts WHERE host = ? AND at > ?", host, now - 60).fetchone()
            if recent["n"] >= GITHUB_WRITES_PER_MINUTE:
                return None
            row = run(
                """SELECT * FROM deliveries WHERE host = ? AND status = ? AND next_attempt_at <= ?
                   ORDER BY next_attempt_at, id LIMIT 1""" + self.skip_locked,
                host, PENDING, now,
            ).fetchone()
            if row is None:
                return None
            run("UPDATE deliveries SET lease_until = ? WHERE id = ?", now + lease_seconds, row["id"])
        return _delivery(row)

    def record(
        self, delivery: Delivery, *, status: str, http_status: int | None, request_id: str | None,
        error: str | None, next_attempt_at: float | None = None, pause_host_until: float | None = None,
    ) -> None:
        """Record an attempt and the delivery's new status; release its lease.

        A delivered attempt proves the host is back: retries of that host
        waiting out a backoff are brought forward, to go one at a time.
        A rate-limited one pauses every delivery to the host until it may retry.
        """
        now = time.time()
        with self._transaction(f"host:{delivery.host}") as run:
            run("""INSERT INTO attempts (delivery_id, host, at, http_status, request_id, error)
                   VALUES (?, ?, ?, ?, ?, ?)""", delivery.id, delivery.host, now, http_status, request_id, error)
            run(
                """UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, lease_until = NULL,
                       next_attempt_at = COALESCE(?, next_attempt_at), last_status = ?, last_error = ?,
                       last_request_id = ?, delivered_at = ?
                   WHERE id = ?""",
                status, now, next_attempt_at, http_status, error, request_id,
                now if status == DELIVERED else None, delivery.id,
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
            return [_delivery(row) for row in rows.fetchall()]

    def attempts(self, delivery_id: int) -> list[dict]:
        """Every attempt of a delivery, oldest first."""
        with self._transaction() as run:
            rows = run("SELECT at, http_status, request_id, error FROM attempts WHERE delivery_id = ? ORDER BY at",
                       delivery_id).fetchall()
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
            for delivery_id in queued:
                run("""UPDATE deliveries SET status = ?, queued_at = ?, updated_at = ?, next_attempt_at = ?,
                           lease_until = NULL WHERE id = ?""", PENDING, now, now, now, delivery_id)
        return sorted(queued), refused

    def prune(self, older_than: float) -> int:
        """Delete delivered and dry-run deliveries last updated before `older_than`; return how many."""
        with self._transaction() as run:
            cursor = run("DELETE FROM deliveries WHERE status IN (?, ?) AND updated_at < ?",
                         DELIVERED, DRY_RUN, older_than)
            return cursor.rowcount

    def counts(self) -> dict[str, int]:
        """How many deliveries have each status."""
        with self._transaction() as run:
            rows = run("SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {row["status"]: row["n"] for row in rows}

    def close(self) -> None:
        """Close this thread's connection (the next use opens a new one)."""
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

        `outcomes` are GitHub's answers (github.Outcome), one per request. A request the
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
                run("""INSERT INTO attempts (delivery_id, host, at, http_status, request_id, error)
                       VALUES (?, ?, ?, ?, ?, ?)""", delivery_id, notification.host, now, outcome.http_status,
                    outcome.request_id, "sent directly: the outbox could not take it")
                run("""UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, lease_until = NULL,
                           last_status = ?, last_error = NULL, last_request_id = ?, delivered_at = ?
                       WHERE id = ?""",
                    DELIVERED, now, outcome.http_status, outcome.request_id, now, delivery_id)


class SQLiteOutbox(Outbox):
    """The outbox in one SQLite file: one connection per thread, the database lock per write."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self.description = f"SQLite {path}"
        self._local = threading.local()
        # The group commit's connection, used by whichever request thread leads (one at a time):
        # its page cache stays warm, where eight threads' own connections would each reload it.
        self._group = SimpleNamespace(conn=None, inode=None)
        self._created = False  # once the file exists, it is never created again (a deleted file is an error)
        self._watchdog = _Watchdog()
        self._queue: list[_PendingAdd] = []
        self._queue_lock = threading.Lock()
        self._committing = False  # a thread is committing; others queue for the next commit

    def add(self, requests: list[DispatchRequest], notification: Notification) -> tuple[list[Accepted], list[str]]:
        """As Outbox.add, committed together with whatever other threads add meanwhile (group commit).

        The first thread to come commits its own notification; those that come while it
        does wait, and the first of them then commits them all in one transaction and one
        fsync, instead of each queueing with its own for the database's single lock. The
        answer still comes only after the commit that holds it. A lone caller never waits
        for another thread; a waiting one, no longer than the outbox's timeout.
        """
        pending = _PendingAdd(requests, notification)
        with self._queue_lock:
            self._queue.append(pending)
            pending.leads = not self._committing
            self._committing = True
        if not pending.leads and not pending.done.wait(self.timeout + 2 * WATCHDOG_TICK):
            with self._queue_lock:
                waiting = pending in self._queue and not pending.leads
                if waiting:
                    self._queue.remove(pending)
            if waiting:
                raise StoreUnavailable(f"no turn to commit within STORE_TIMEOUT ({self.timeout:g} s)")
            # A commit holds it, or it was just handed the lead: that commit ends within its own deadline.
            pending.done.wait()
        if pending.leads:
            self._commit_queue()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _commit_queue(self) -> None:
        """Commit what is queued, then hand the lead to the first request queued meanwhile.

        When the store cannot commit, those queued meanwhile learn it at once, rather
        than each waiting out another deadline: their requests send them directly.
        """
        with self._queue_lock:
            batch, self._queue = self._queue[:GROUP_COMMIT_MAX], self._queue[GROUP_COMMIT_MAX:]
        settled = batch
        try:
            with self._transaction(slot=self._group) as run:
                results = [self._insert(run, p.requests, p.notification) for p in batch]
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                with self._queue_lock:
                    settled, self._queue = batch + self._queue, []
            for pending in settled:
                pending.error = exc
        else:
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
        finally:
            with self._queue_lock:
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].done.set()
                else:
                    self._committing = False
            for pending in settled:
                pending.done.set()

    def _connection(self, slot) -> sqlite3.Connection:
        """The connection in `slot` (this thread's, or the group commit's) to the file at `path` now.

        A file replaced (a restore) is opened anew.
        """
        conn = getattr(slot, "conn", None)
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if conn is not None and inode != slot.inode:
            self._close(slot)
            conn = None
        if conn is None:
            if inode is None and self._created:
                raise StoreUnavailable(f"the database file {self.path} is missing")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                _enable_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            slot.conn, slot.inode = conn, os.stat(self.path).st_ino
            self._created = True
        return conn

    def close(self) -> None:
        self._close(self._local)

    def _close(self, slot) -> None:
        conn, slot.conn = getattr(slot, "conn", None), None
        if conn is not None:
            conn.close()

    @contextmanager
    def _transaction(self, *lock_keys: str, slot=None) -> Iterator[Run]:
        # BEGIN IMMEDIATE takes the database's write lock: every key at once.
        started = time.monotonic()
        slot = slot or self._local
        conn = None
        try:
            conn = self._connection(slot)
            with self._watchdog.guard(started + self.timeout, conn.interrupt):
                conn.execute("BEGIN IMMEDIATE")
                locked = time.monotonic() - started
                yield lambda sql, *params: conn.execute(sql, params)
                conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._abandon(conn, slot)
            raise StoreUnavailable(_sqlite_reason(exc, time.monotonic() - started, self.timeout)) from exc
        except BaseException:
            self._abandon(conn, slot)
            raise
        _warn_if_slow(self.description, started, lambda: f"{locked:.1f} s of it waiting for the write lock, "
                      "which another process held" if locked > SLOW / 2 else "the disk was slow to write it")

    def _abandon(self, conn: sqlite3.Connection | None, slot) -> None:
        """After a failure: roll back what is open (a failed COMMIT may have closed it), drop the connection."""
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._close(slot)


def _sqlite_reason(exc: BaseException, elapsed: float, timeout: float) -> str:
    """What went wrong, for the log and the answer: "database is locked (waited 2.0 s)", "database or disk is full"."""
    if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
        return f"no answer within STORE_TIMEOUT ({timeout:g} s)"
    reason = str(exc) or type(exc).__name__
    if "locked" in reason or "busy" in reason:
        reason += f" (waited {elapsed:.1f} s)"
    return reason


def _warn_if_slow(description: str, started: float, cause: Callable[[], str]) -> None:
    """A transaction that succeeded, slowly: a warning with its cause (a failed one is the caller's to log).

    `cause` is only worked out for a slow one: this runs after every commit.
    """
    elapsed = time.monotonic() - started
    if elapsed > SLOW:
        log.warning("the outbox (%s) took %.1f s for one transaction: %s", description, elapsed, cause())


class PostgresOutbox(Outbox):
    """The outbox in PostgreSQL, for several replicas: advisory locks and SKIP LOCKED claims."""

    ddl = {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "real": "DOUBLE PRECISION"}
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        import psycopg  # only deployments that use PostgreSQL need the driver loaded

        self._psycopg = psycopg
        self._url = url
        self.timeout = timeout
        self.description = "PostgreSQL"
        self._local = threading.local()
        self._watchdog = _Watchdog()

    def __repr__(self) -> str:
        return "PostgresOutbox()"  # the URL may hold a password

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            from psycopg.rows import dict_row

            # libpq bounds connecting (whole seconds, 2 at least); the server bounds locks and
            # statements; the watchdog bounds the rest, a server that stopped answering included.
            timeout_ms = int(self.timeout * 1000)
            conn = self._psycopg.connect(
                self._url, autocommit=True, row_factory=dict_row, connect_timeout=max(2, math.ceil(self.timeout)),
                options=f"-c lock_timeout={timeout_ms} -c statement_timeout={timeout_ms}",
            )
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, *lock_keys: str) -> Iterator[Run]:
        started = time.monotonic()
        try:
            conn = self._connection()
            with self._watchdog.guard(started + self.timeout, partial(_shut_socket, conn)), conn.transaction():
                def run(sql, *params):
                    return conn.execute(sql.replace("?", "%s"), params)

                for key in lock_keys:
                    run("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", key)
                yield run
        except self._psycopg.Error as exc:
            conn = getattr(self._local, "conn", None)
            if conn is not None and (conn.broken or conn.closed):
                self._local.conn = None
            elapsed = time.monotonic() - started
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if elapsed >= self.timeout:
                reason = f"no answer within STORE_TIMEOUT ({self.timeout:g} s): {reason}"
            raise StoreUnavailable(reason) from exc
        _warn_if_slow(self.description, started, lambda: "waiting for locks or for the server")


def _shut_socket(conn) -> None:
    """Make a query waiting on a server that stopped answering fail now: shut its socket (the fd stays psycopg's)."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put a new database in WAL mode (which then stays). Retried: SQLite answers a concurrent
    switch, from another worker opening the same new file, "locked" without waiting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_outbox(database_url: str, timeout: float = DEFAULT_TIMEOUT) -> Outbox:
    """The outbox named by DATABASE_URL (validated by config); each transaction ends within `timeout` seconds."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresOutbox(database_url, timeout)
    return SQLiteOutbox(Path(database_url[len("sqlite:///"):]), timeout)


def _delivery(row) -> Delivery:
    return Delivery(**{f.name: row[f.name] for f in fields(Delivery)})
