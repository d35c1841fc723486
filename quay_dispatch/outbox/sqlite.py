"""The outbox in one SQLite file, for one host: WAL mode, synchronous=FULL, a group commit."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..domain.dispatch_request import DispatchRequest
from .records import DEFAULT_TIMEOUT, Accepted, Notification, Run, StoreUnavailable
from .store import Outbox
from .watchdog import SLOW, WATCHDOG_TICK, Watchdog, warn_if_slow

GROUP_COMMIT_MAX = 64  # notifications committed together at most


@dataclass
class _PendingAdd:
    """One request's notification, waiting for the group commit that will hold it."""

    requests: list[DispatchRequest]
    notification: Notification
    done: threading.Event = field(default_factory=threading.Event)  # set when committed, or to lead
    leads: bool = False  # this request's thread commits the queue
    result: tuple[list[Accepted], list[str]] | None = None
    error: Exception | None = None


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
        self._watchdog = Watchdog()
        self._queue: list[_PendingAdd] = []
        self._queue_lock = threading.Lock()
        self._committing = False  # a thread is committing; others queue for the next commit

    def restrict_to_owner(self) -> None:
        """Mode 0600 for the file and its WAL and shared-memory files (SQLite makes those with the file's mode)."""
        for path in [self.path] + [self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm")]:
            try:
                path.chmod(0o600)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreUnavailable(f"{path} cannot be made private (mode 0600): {exc.strerror}") from exc

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
        batch: list[_PendingAdd] = []
        try:
            with self._transaction(slot=self._group) as run:
                # Taken once the write lock is held: what arrived while another worker held it
                # joins this commit, instead of waiting for the lock and an fsync of its own.
                with self._queue_lock:
                    batch, self._queue = self._queue[:GROUP_COMMIT_MAX], self._queue[GROUP_COMMIT_MAX:]
                results = [self._insert(run, p.requests, p.notification) for p in batch]
        except Exception as exc:
            with self._queue_lock:
                if isinstance(exc, StoreUnavailable) or not batch:  # not batch: it failed before taking any
                    batch, self._queue = batch + self._queue, []
            for pending in batch:
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
            for pending in batch:
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
        self._watchdog.stop()
        self._close(self._local)

    def _close(self, slot) -> None:
        conn, slot.conn = getattr(slot, "conn", None), None
        if conn is not None:
            conn.close()

    def _read(self) -> AbstractContextManager[Run]:
        return self._transaction(begin="BEGIN")  # deferred: a reader takes no write lock, and WAL never blocks it

    def changes(self) -> WALChanges:
        return WALChanges(self.path.with_name(self.path.name + "-shm"))

    @contextmanager
    def _transaction(self, *lock_keys: str, slot=None, begin: str = "BEGIN IMMEDIATE") -> Iterator[Run]:
        # BEGIN IMMEDIATE takes the database's write lock: every key at once.
        started = time.monotonic()
        slot = slot or self._local
        conn = None
        try:
            conn = self._connection(slot)
            with self._watchdog.guard(started + self.timeout, conn.interrupt):
                conn.execute(begin)
                locked = time.monotonic() - started
                yield lambda sql, *params: conn.execute(sql, params)
                conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._abandon(conn, slot)
            raise StoreUnavailable(self._reason(exc, time.monotonic() - started)) from exc
        except BaseException:
            self._abandon(conn, slot)
            raise
        warn_if_slow(self.description, started, lambda: f"{locked:.1f} s of it waiting for the write lock, "
                      "which another process held" if locked > SLOW / 2 else "the disk was slow to write it")

    def _reason(self, exc: BaseException, elapsed: float) -> str:
        """What went wrong, for the log and the answer: "database is locked (waited 2.0 s)", "database or disk is
        full"."""
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return f"no answer within {self.deadline_name} ({self.timeout:g} s)"
        reason = str(exc) or type(exc).__name__
        if "locked" in reason or "busy" in reason:
            reason += f" (waited {elapsed:.1f} s)"
        return reason

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


class WALChanges:
    """Another process's commit, seen in the WAL index's header (the -shm file's first 48 bytes: a counter every
    commit increments, the last frame, the salts): one pread(), no lock, no transaction. The WAL file's size and
    time would miss a commit within the clock's tick after a checkpoint restarted the log.

    Its descriptor is never closed: closing any descriptor of a file drops every POSIX lock this process holds on
    it, SQLite's own on the -shm file included. A file replaced (a restore) is opened anew, the old descriptor left
    open."""

    def __init__(self, shm: Path):
        self.shm, self._last, self._fd = shm, None, None

    def seen(self) -> bool:
        try:
            if self._fd is None or os.fstat(self._fd).st_ino != os.stat(self.shm).st_ino:
                self._fd = os.open(self.shm, os.O_RDONLY)
            header = os.pread(self._fd, 48, 0)
        except OSError:
            header = None  # no connection has it open yet: a read makes one
        changed, self._last = header != self._last or header is None, header
        return changed
