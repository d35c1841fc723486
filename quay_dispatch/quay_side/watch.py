"""The watch: every QUAY_WATCH_INTERVAL, one worker of one replica (a lease in the store, as ACME's orders) looks at
Quay's side, resets the relay's notifications that Quay disabled (QUAY_REPAIR), and recovers what Quay dropped while
one failed (QUAY_RECOVER, recover.py). What it found is kept in the store as one shared value, for the metrics
(gauges.py), the page and `quay`. It runs in a thread of its own: Quay's API being down, slow or refusing never
touches a request from Quay.

A notification is in trouble from the last look that saw it without failures (or the repository's first look) until
QUAY_RECOVER_GRACE after a look sees it without failures again; each look meanwhile recovers that span, as the
outbox makes a second recovery of the same event a duplicate. An event that cannot be recovered (vulnerability,
mirror, expiry) leaves an outage: the notification and the span, "may be missing"."""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable

from ..base.printable import utc
from ..config import Settings
from ..outbox import Outbox, StoreUnavailable
from .api import QuayAPI, QuayAPIError
from .recover import LEAD, RECOVERABLE, Recovery, count_recovered
from .seen import last_heard
from .survey import Row, survey

LEASE = "quay-watch"
STATE = "quay-watch-state"
FIRST_LOOK = 2.0  # seconds after a worker starts, plus up to as much again at random
MAX_STREAK = 3  # resets in a row with nothing coming through after any of them: then repair holds off
MAX_API_BACKOFF = 3600.0  # seconds: the longest wait after Quay's API refused or failed
PACE = 1.0  # seconds at most between two repositories' listings
LEASE_MARGIN = 60.0  # seconds a lease outlives the interval: a look that takes long keeps it
OUTAGES_KEPT = 50
log = logging.getLogger("quay_dispatch.quay")


def load_state(outbox: Outbox) -> dict:
    """What the latest watch found (empty before the first)."""
    return json.loads(outbox.load(STATE) or "{}")


class Watch:
    """Looks at Quay's side now and then, under the store's lease; `ready()`: why the relay is not ready, or None."""

    def __init__(self, settings: Settings, outbox: Outbox, ready: Callable[[], str | None], host: str,
                 api: QuayAPI | None = None):
        """`host`: the GitHub API host that recovered events go to (the deliverer's)."""
        self.settings, self.outbox, self.ready = settings, outbox, ready
        self.api = api or QuayAPI(settings.quay_api_url, settings.quay_api_token)
        self.recovery = Recovery(settings, outbox, self.api, host)
        self.interval = settings.quay_watch_interval
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="quay-watch", daemon=True)
            self._thread.start()
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop looking, and hand the lease back for another worker or replica to take at once."""
        self._stop.set()
        try:
            self.outbox.unlock(LEASE, self.holder)
        except Exception:  # leaving: the lease then runs out by itself
            pass

    def _run(self) -> None:
        delay = FIRST_LOOK * (1 + random.random())
        while not self._stop.wait(delay):
            delay = self.interval
            try:
                self._turn()
            except StoreUnavailable as exc:
                log.warning("Quay's side was not looked at: the store cannot answer (%s)", exc)
            except Exception:  # the watch goes on whatever one look met
                log.exception("Quay's side: the look failed")

    def _turn(self) -> None:
        """One turn of the thread: a look, when this process holds the lease and neither the last look (by anyone)
        nor a backoff after Quay's API failed says to wait."""
        if not self.outbox.lock(LEASE, self.holder, self.interval + LEASE_MARGIN):
            return
        state = load_state(self.outbox)
        now = time.time()
        if now < ((state.get("api") or {}).get("backoff_until") or 0) or now - state.get("at", 0) < 0.9 * self.interval:
            return
        self.look(state)

    def look(self, state: dict, force: bool = False) -> dict:
        """Look at Quay's side once, repair what needs it (`force`: the operator's `quay repair`, whatever the
        backoff), keep what was found, and return it."""
        now, settings = time.time(), self.settings
        heard = last_heard(self.outbox)
        found = survey(self.api, settings.routes, settings.public_url, heard,
                       between=None if force else self._pace)
        state["at"], state["problems"] = now, found.problems[:20]
        if found.stopped is not None:
            self._api_failed(state, found.stopped, now)
        else:
            state["api"] = {"ok_at": now, "status": 200, "error": None, "failures": 0, "backoff_until": 0}
            first = state.setdefault("first_watch", {})
            notes = state.get("notifications") or {}
            state["notifications"] = {}
            for row in found.rows:
                if row.wanted:
                    first.setdefault(row.repository, now)
                    entry = self._entry(row, notes, first[row.repository], heard, now)
                    if row.notification is not None and row.notification.disabled:
                        self._repair(state, row, entry, now, force)
                    state["notifications"][_key(row)] = entry
            if settings.quay_recover:
                self._recover(state, now)
        self.outbox.store(STATE, json.dumps(state))
        return state

    def _recover(self, state: dict, now: float) -> None:
        """Recover the spans of the notifications in trouble; end the trouble of those well again for a grace."""
        settings, windows = self.settings, {}
        for entry in state["notifications"].values():
            if entry["trouble_since"] is None:
                continue
            start = max(entry["trouble_since"] - LEAD.get(entry["event"], 0),
                        state["first_watch"][entry["repository"]] - 1,  # Quay's times are to the second
                        now - settings.quay_recover_max_age)
            end = now - settings.quay_recover_grace
            if entry["event"] in RECOVERABLE and start < end:
                windows[(entry["repository"], entry["event"])] = (start, end)
        found, problems = self.recovery.run(windows)
        state["problems"] += problems
        count_recovered(state, found)
        for entry in state["notifications"].values():
            if entry["healthy_since"] is not None and now - settings.quay_recover_grace >= entry["healthy_since"]:
                if entry["event"] not in RECOVERABLE:
                    outage = {key: entry[key] for key in ("repository", "event", "uuid", "trouble_since",
                                                          "healthy_since")}
                    state["outages"] = (state.get("outages") or [])[-(OUTAGES_KEPT - 1):] + [outage]
                entry["trouble_since"] = entry["healthy_since"] = None

    def _entry(self, row: Row, previous: dict, first: float, heard: dict, now: float) -> dict:
        """What is kept of one wanted notification (or of its absence), carried over from the previous look."""
        old = previous.get(_key(row), {})
        n = row.notification
        entry = {"repository": row.repository, "event": row.event, "uuid": n and n.uuid, "missing": n is None,
                 "failures": n.failures if n else 0, "disabled": bool(n and n.disabled),
                 "ok_at": old.get("ok_at", first), "streak": old.get("streak", 0), "reset_at": old.get("reset_at"),
                 "resets": old.get("resets", 0), "held": None, "trouble_since": old.get("trouble_since"),
                 "healthy_since": old.get("healthy_since")}
        if n is not None and n.failures == 0:
            entry["ok_at"] = now
            if entry["trouble_since"] is not None and entry["healthy_since"] is None:
                entry["healthy_since"] = now
        elif n is not None:
            entry["trouble_since"] = entry["trouble_since"] or old.get("ok_at", first)
            entry["healthy_since"] = None
        if entry["reset_at"] and heard.get((row.repository, row.event), 0) > entry["reset_at"]:
            entry["streak"] = 0  # something came through since the last reset: the repair worked
        return entry

    def _repair(self, state: dict, row: Row, entry: dict, now: float, force: bool) -> None:
        """Reset a disabled notification of the relay's, unless repairing is off, the relay is not ready, or the
        resets so far did not help (backoff, then held until something comes through or an operator says so)."""
        streak = entry["streak"]
        if not self.settings.quay_repair and not force:
            entry["held"] = "QUAY_REPAIR is off"
            return
        if why := self.ready():
            entry["held"] = f"not while the relay is not ready ({why})"
            return
        if streak >= MAX_STREAK and not force:
            entry["held"] = (f"reset {streak} times and disabled again each time, with nothing coming through: the "
                             "relay refuses Quay or Quay cannot reach it; fix that, then `flask --app app quay repair`")
            return
        next_try = entry["reset_at"] + self.interval * 2 ** (streak - 1) if streak else now
        if not force and now < next_try:
            entry["held"] = f"backing off after {streak} reset(s) in a row; next try after {utc(next_try)}"
            return
        try:
            self.api.reset_failures(row.repository, row.notification.uuid)
        except QuayAPIError as exc:
            entry["held"] = f"Quay did not reset it: {exc}"
            return
        entry.update(streak=0 if force else streak + 1, reset_at=now, resets=entry["resets"] + 1, failures=0,
                     disabled=False)
        state["resets_total"] = state.get("resets_total", 0) + 1
        log.warning("Quay had disabled the notification %s of %s for %s after %d failures: reset it (%s)",
                    row.notification.uuid, row.repository, row.event, row.notification.failures,
                    "by hand" if force else f"reset {entry['streak']} in a row")

    def _api_failed(self, state: dict, exc: QuayAPIError, now: float) -> None:
        api = state.get("api") or {}
        failures = api.get("failures", 0) + 1
        backoff = min(self.interval * 2 ** (failures - 1), MAX_API_BACKOFF)
        state["api"] = api | {"status": exc.status, "error": str(exc), "failures": failures,
                              "backoff_until": now + backoff - self.interval}
        log.warning("Quay's side was not looked at: %s; next look in %.0f s", str(exc)[:300],
                    max(backoff, self.interval))

    def _pace(self, repositories: int) -> None:
        """Between two repositories' listings: spread a namespace of hundreds over half the interval at most."""
        self._stop.wait(min(PACE, self.interval / 2 / repositories))


def _key(row: Row) -> str:
    return row.notification.uuid if row.notification else f"missing:{row.repository}|{row.event}"
