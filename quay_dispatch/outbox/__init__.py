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

from pathlib import Path

from .postgres import PostgresOutbox
from .records import DEFAULT_TIMEOUT, Accepted, Delivery, Notification, StoreUnavailable
from .sqlite import SQLiteOutbox
from .store import Outbox

__all__ = ["DEFAULT_TIMEOUT", "Accepted", "Delivery", "Notification", "Outbox", "PostgresOutbox", "SQLiteOutbox",
           "StoreUnavailable", "open_outbox"]


def open_outbox(database_url: str, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None) -> Outbox:
    """The outbox named by DATABASE_URL (validated by config); each transaction ends within `timeout` seconds,
    reaching a database server within `connect_timeout` (default: `timeout`)."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresOutbox(database_url, timeout, connect_timeout)
    return SQLiteOutbox(Path(database_url[len("sqlite:///"):]), timeout)
