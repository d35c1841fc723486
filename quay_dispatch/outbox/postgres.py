"""The outbox in PostgreSQL, for several replicas: advisory locks, SKIP LOCKED claims, a client-side deadline."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from .records import DEFAULT_TIMEOUT, Run, StoreUnavailable
from .store import Outbox
from .watchdog import Watchdog, warn_if_slow

CHANNEL = "quay_dispatch_outbox"  # NOTIFY's channel: deliveries were queued, or a shared value changed


class PostgresOutbox(Outbox):
    """The outbox in PostgreSQL, for several replicas: advisory locks and SKIP LOCKED claims."""

    ddl = {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "real": "DOUBLE PRECISION"}
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None):
        import psycopg  # only deployments that use PostgreSQL need the driver loaded

        self._psycopg = psycopg
        self._url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout or timeout
        self.description = f"PostgreSQL at {_location(url)}"
        self._local = threading.local()
        self._watchdog = Watchdog()

    def changes(self) -> NotifiedChanges:
        return NotifiedChanges(self)

    def _announce(self, run: Run) -> None:
        run(f"NOTIFY {CHANNEL}")  # sent at commit, to every listening deliverer

    def __repr__(self) -> str:
        return "PostgresOutbox()"  # the URL may hold a password

    def connect(self) -> None:
        self._connection()

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
        return conn

    def _connect(self):
        """A new connection, or StoreUnavailable within connect_timeout (per address the host name has)."""
        from psycopg.rows import dict_row

        # psycopg bounds each attempt, the SSL negotiation and libpq's retry without SSL included (whole
        # seconds, 2 at least); the server bounds locks and statements; the watchdog bounds the rest, a
        # server that stopped answering included.
        seconds = max(2, math.ceil(self.connect_timeout))
        timeout_ms = int(self.timeout * 1000)
        try:
            return self._psycopg.connect(
                self._url, autocommit=True, row_factory=dict_row, connect_timeout=seconds,
                options=f"-c lock_timeout={timeout_ms} -c statement_timeout={timeout_ms}",
            )
        except self._psycopg.errors.ConnectionTimeout as exc:
            raise StoreUnavailable(f"no answer within {seconds} s while connecting (is something else listening "
                                   "on that port, or a firewall dropping the packets?)") from exc
        except self._psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect: {_first_line(exc)}") from exc

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
            reason = _first_line(exc)
            if time.monotonic() - started >= self.timeout:
                reason = f"no answer within {self.deadline_name} ({self.timeout:g} s): {reason}"
            raise StoreUnavailable(reason) from exc
        warn_if_slow(self.description, started, lambda: "waiting for locks or for the server")


class NotifiedChanges:
    """Other processes' changes, from PostgreSQL's NOTIFY: a connection of its own that LISTENs, read without
    waiting. Without it (not yet, or lost with the server or the network) every call says True, so the caller
    reads as it did before there were signs; it listens again at most every RETRY seconds, since connecting may
    take its whole timeout."""

    RETRY = 10.0

    def __init__(self, outbox: PostgresOutbox):
        self.outbox, self.conn, self._retry_at = outbox, None, 0.0

    def seen(self) -> bool:
        try:
            if self.conn is None:
                if time.monotonic() >= self._retry_at:
                    self._retry_at = time.monotonic() + self.RETRY
                    self.conn = self.outbox._connect()
                    self.conn.execute(f"LISTEN {CHANNEL}")
                return True
            return any(True for _ in self.conn.notifies(timeout=0))
        except (StoreUnavailable, self.outbox._psycopg.Error):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return True


def _shut_socket(conn) -> None:
    """Make a query waiting on a server that stopped answering fail now: shut its socket (the fd stays psycopg's)."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _location(url: str) -> str:
    """host:port of DATABASE_URL, for messages: never its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:  # config checked the scheme only: whatever libpq's parser refuses is the driver's to say
        return "DATABASE_URL"
    host = params.get("host") or "the local socket"
    return f"[{host}]:{params.get('port') or 5432}" if ":" in host else f"{host}:{params.get('port') or 5432}"
