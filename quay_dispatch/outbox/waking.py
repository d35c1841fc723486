"""What lets a deliverer sleep while nothing is due: when the next claim could succeed, read without a write lock, and
a cheap sign that another process changed the store (a new event, a redelivery), each store its own."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

from ..domain.dispatch_request import PENDING
from .records import Run


class Changes(Protocol):
    """Whether the store may hold something new since the last call: no transaction, no lock; True when unsure."""

    def seen(self) -> bool: ...


class Waking:
    """The outbox's part in an idle deliverer; the outbox (store.Outbox) provides the transactions."""

    def _read(self) -> AbstractContextManager[Run]:
        raise NotImplementedError

    def changes(self) -> Changes:
        """A fresh sign of other processes' commits, for one thread (each store has its own)."""
        raise NotImplementedError

    def _announce(self, run: Run) -> None:
        """Within a transaction that queued deliveries: let the other processes' deliverers know, where the store
        has a way (PostgreSQL's NOTIFY); SQLite's other processes see its file change."""

    def next_due(self, host: str, writes_per_minute: int) -> float | None:
        """When a claim for `host` could next succeed (epoch seconds; past when now), or None when nothing waits.

        The latest of: the earliest pending delivery's next attempt, the end of a lease in flight (a worker
        that died mid-send), the host's pause, and the pace (the attempt that must leave the last minute first).
        """
        now = time.time()
        with self._read() as run:
            due = run("SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE host = ? AND status = ?",
                      host, PENDING).fetchone()["t"]
            if due is None:
                return None
            lease = run("SELECT MAX(lease_until) AS t FROM deliveries WHERE host = ? AND status = ? "
                        "AND lease_until > ?", host, PENDING, now).fetchone()["t"]
            paused = run("SELECT paused_until AS t FROM hosts WHERE host = ?", host).fetchone()
            paced = run("SELECT at AS t FROM attempts WHERE host = ? AND at > ? ORDER BY at DESC LIMIT 1 OFFSET ?",
                        host, now - 60, writes_per_minute - 1).fetchone()
        return max(due, lease or 0.0, paused["t"] if paused else 0.0, paced["t"] + 60 if paced else 0.0)
