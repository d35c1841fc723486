"""What every worker and replica must agree on besides deliveries (ACME's account, certificate and challenges):
named values, and leases that one holder at a time may take. The storage interface certmagic has (load, store,
lock, unlock), on the outbox's own store, within its deadline."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

from .records import Run, like_literal


class SharedState:
    """Named values and leases in the outbox's store; the outbox (store.Outbox) provides the transactions (and
    _announce, waking.Waking's)."""

    def _transaction(self, *lock_keys: str) -> AbstractContextManager[Run]:
        raise NotImplementedError

    def load(self, name: str) -> str | None:
        """The value stored under `name`, or None."""
        with self._read() as run:
            row = run("SELECT value FROM shared_values WHERE name = ?", name).fetchone()
        return row["value"] if row else None

    def load_prefixed(self, prefix: str) -> dict[str, str]:
        """Every value whose name starts with `prefix`, by name."""
        with self._read() as run:
            rows = run("SELECT name, value FROM shared_values WHERE name LIKE ? ESCAPE '\\'",
                       _like_prefix(prefix)).fetchall()
        return {row["name"]: row["value"] for row in rows}

    def store(self, name: str, value: str | None) -> None:
        """Store `value` under `name` (None deletes it)."""
        with self._transaction(f"shared:{name}") as run:
            run("DELETE FROM shared_values WHERE name = ?", name)
            if value is not None:
                run("INSERT INTO shared_values (name, value, updated_at) VALUES (?, ?, ?)", name, value, time.time())
            self._announce(run)  # ACME's workers look at the store when it changed (a challenge, a certificate)

    def lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease `name` for `holder` for `seconds`, or extend it: False while someone else holds it."""
        now = time.time()
        with self._transaction(f"lease:{name}") as run:
            row = run("SELECT holder, expires_at FROM shared_leases WHERE name = ?", name).fetchone()
            if row and row["holder"] != holder and row["expires_at"] > now:
                return False
            run("DELETE FROM shared_leases WHERE name = ?", name)
            run("INSERT INTO shared_leases (name, holder, expires_at) VALUES (?, ?, ?)", name, holder, now + seconds)
        return True

    def unlock(self, name: str, holder: str) -> None:
        """Give the lease back, if `holder` has it."""
        with self._transaction(f"lease:{name}") as run:
            run("DELETE FROM shared_leases WHERE name = ? AND holder = ?", name, holder)


def _like_prefix(prefix: str) -> str:
    return like_literal(prefix) + "%"


