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
        self._watchdog = Watchdog()

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
        warn_if_slow(self.description, started, lambda: "waiting for locks or for the server")


def _shut_socket(conn) -> None:
    """Make a query waiting on a server that stopped answering fail now: shut its socket (the fd stays psycopg's)."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)
