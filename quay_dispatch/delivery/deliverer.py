"""Delivery: a background thread per worker that sends due deliveries to GitHub and records what follows.

What follows each attempt (delivered, retry, a paused host, failed or expired) is
policy.py's to decide; this module claims, sends, records and logs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..base import metrics
from ..domain import policy
from ..domain.dispatch_request import DELIVERED, PENDING, DispatchRequest, canonical_json
from ..outbox import Delivery, Notification, Outbox, StoreUnavailable
from . import github

log = logging.getLogger("quay_dispatch.delivery")

# Idle, the deliverer claims nothing (a claim takes the store's write lock): its own worker's commits wake it, it
# sleeps until the next attempt it knows is due, and it reads when that is (outbox.next_due) only when another
# process changed the store (outbox.changes: SQLite's WAL index, PostgreSQL's NOTIFY; every WAKE_CHECK) or a
# SWEEP_INTERVAL passed, which bounds what a sign could miss. Its heartbeat is in memory, every WAKE_CHECK.
WAKE_CHECK = 2.0
SWEEP_INTERVAL = 30.0
# After a claim that found nothing to send (or GitHub's pace says wait), the next comes no sooner
# than this, however often new events wake the deliverer: under a burst, requests then do not
# queue behind a claim per accepted event for the database's write lock.
MIN_LOOK_INTERVAL = 0.2
PRUNE_INTERVAL = 3600.0
MAX_UNRECORDED = 10_000  # results and direct dispatches kept in memory while the store cannot take them
DIRECT_DEDUP_WINDOW = 600.0  # seconds a direct dispatch is remembered, so that Quay's retry is a duplicate


@dataclass(frozen=True)
class DirectDispatch:
    """Notifications sent to GitHub directly while the outbox could not take them, to record once it can."""

    requests: list[DispatchRequest]
    outcomes: list[policy.Outcome]
    notification: Notification


class Deliverer:
    """Sends due deliveries for one GitHub host, one at a time across all workers."""

    def __init__(self, outbox: Outbox, client: github.GitHubClient, max_age: float, retention: float):
        self.outbox = outbox
        self.client = client
        self.host = github.host_of(client.api_url)
        self.policy = policy.DeliveryPolicy(max_age, longest_call=github.CONNECT_TIMEOUT + client.timeout)
        self.retention = retention
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0
        # What happened while the store could not record it: sent directly, or a result of ours.
        self._direct: deque[DirectDispatch] = deque(maxlen=MAX_UNRECORDED)
        self._unrecorded: deque[tuple[Delivery, dict]] = deque(maxlen=MAX_UNRECORDED)
        self._recent_direct: dict[str, float] = {}  # dedup key -> until (time.monotonic())
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="deliverer", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A new delivery was stored: look at once instead of at the next poll."""
        if not self._wake.is_set():  # set() costs a lock even when the flag is already up
            self._wake.set()

    def _sent_directly(self, direct: DirectDispatch) -> None:
        """Remember a direct dispatch: for the outbox once the store is back, and against Quay's retries meanwhile."""
        until = time.monotonic() + DIRECT_DEDUP_WINDOW
        for outcome in direct.outcomes:
            metrics.github_said(self.host, outcome)
        with self._lock:
            self._direct.append(direct)
            for req, outcome in zip(direct.requests, direct.outcomes, strict=True):
                if outcome.result == policy.ACCEPTED:
                    self._recent_direct[req.dedup_key] = until
            if len(self._recent_direct) > MAX_UNRECORDED:
                now = time.monotonic()
                self._recent_direct = {k: t for k, t in self._recent_direct.items() if t > now}
        self.wake()

    def dispatch_directly(self, planned: list[DispatchRequest], notification: Notification, until: float
                          ) -> tuple[list[DispatchRequest], list[str]]:
        """Send what the outbox could not take to GitHub now, every call ended by `until` (time.monotonic()), so
        that Quay's call still succeeds: the requests sent (none when this process sent them all lately, Quay's
        retry), and what GitHub did not accept, "target: error" each. Remembered for the outbox, and counted."""
        fresh = [req for req in planned if not self._was_sent_directly(req)]
        if not fresh:
            return [], []
        with github.deadline(until):
            outcomes = [self.client.dispatch(req.kind, req.path, canonical_json(req.body), req.target)
                        for req in fresh]
        self._sent_directly(DirectDispatch(fresh, outcomes, notification))
        refused = [f"{req.target}: {outcome.error}" for req, outcome in zip(fresh, outcomes, strict=True)
                   if outcome.result != policy.ACCEPTED]
        metrics.STORE_BYPASS.labels("unavailable" if refused else "dispatched").inc()
        return fresh, refused

    def _was_sent_directly(self, req: DispatchRequest) -> bool:
        """Whether this process sent `req` directly lately (the outbox may not know yet)."""
        return self._recent_direct.get(req.dedup_key, 0.0) > time.monotonic()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        # A daemon thread: it ends with its worker. A send cut short by that is sent
        # again once its lease expires (delivery is at least once).
        changes = self.outbox.changes()
        claim, due_at, sweep_at = True, None, 0.0
        while True:
            metrics.DELIVERER_HEARTBEAT.labels(self.host).set(time.time())
            claimed = claim or (due_at is not None and time.time() >= due_at)
            try:
                self._record_what_waits()
                self._prune_when_due()
                if claimed and not self._unrecorded and self.deliver_one():
                    continue
                if claimed or changes.seen() or time.monotonic() >= sweep_at:
                    sweep_at = time.monotonic() + SWEEP_INTERVAL
                    due_at = self.outbox.next_due(self.host, self.policy.writes_per_minute)
                    if claimed and due_at is not None and due_at <= time.time():  # due, yet nothing was claimable:
                        due_at = time.time() + WAKE_CHECK  # another's claim in flight; not a claim per 0.2 s meanwhile
            except StoreUnavailable as exc:
                log.warning("outbox unavailable, delivery paused: %s", exc)
                due_at = time.time() + WAKE_CHECK  # then claim again: the store may be back
            except Exception:  # a bug must not kill the thread and strand the outbox
                log.exception("unexpected error in the deliverer")
                due_at = time.time() + WAKE_CHECK
            wait = WAKE_CHECK if due_at is None else min(WAKE_CHECK, max(0.0, due_at - time.time()))
            if claimed:
                time.sleep(MIN_LOOK_INTERVAL)
                wait = max(0.0, wait - MIN_LOOK_INTERVAL)
            claim = self._wake.wait(wait)
            self._wake.clear()

    def _record_what_waits(self) -> None:
        """Write to the outbox what it could not take before: results of ours first, then direct dispatches."""
        while self._unrecorded:
            delivery, result = self._unrecorded[0]
            self.outbox.record(delivery, **result)  # raises StoreUnavailable while the store is still down
            self._unrecorded.popleft()
            log.info("delivery %s: its result is recorded now that the outbox is back", delivery.id)
        while self._direct:
            direct = self._direct[0]
            delivered = [(r, o) for r, o in zip(direct.requests, direct.outcomes, strict=True)
                         if o.result == policy.ACCEPTED]
            if delivered:
                self.outbox.record_dispatched([r for r, _ in delivered], [o for _, o in delivered], direct.notification)
            self._direct.popleft()
            log.info("recorded %d direct dispatch(es) of %s %s as delivered", len(delivered),
                     direct.notification.event, direct.notification.quay_repository)

    def _prune_when_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_INTERVAL
        pruned = self.outbox.prune(time.time() - self.retention)
        if pruned:
            log.info("pruned %d delivered deliveries older than %.0f days", pruned, self.retention / 86400)

    def deliver_one(self) -> bool:
        """Send the next due delivery, if any; return whether there was one."""
        delivery = self.outbox.claim(self.host, self.policy.lease_seconds, self.policy.writes_per_minute)
        if delivery is None:
            return False
        started = time.monotonic()
        log.debug("delivery %s: POST %s %s", delivery.id, delivery.path, delivery.body)
        outcome = self.client.dispatch(delivery.kind, delivery.path, delivery.body, delivery.target)
        decision = self.policy.decide(outcome, delivery.attempts, delivery.queued_at)
        status, next_at = decision.status, decision.next_attempt_at
        result = dict(status=status, http_status=outcome.http_status, request_id=outcome.request_id,
                      error=outcome.error, next_attempt_at=next_at, pause_host_until=decision.pause_host_until,
                      duration_ms=outcome.duration_ms, run_id=outcome.run_id, run_url=outcome.run_url)
        try:
            self.outbox.record(delivery, **result)
        except StoreUnavailable as exc:
            # Kept, and recorded first once the store is back. Until then the delivery stays leased;
            # only another worker or replica that can write to the store after the lease ends
            # (docs/operations.md) could send it again.
            self._unrecorded.append((delivery, result))
            log.error("delivery %s to %s: %s, but the outbox cannot record it (%s); it will be recorded once "
                      "the outbox is back", delivery.id, delivery.target,
                      f"GitHub accepted it ({outcome.http_status})" if status == DELIVERED else status, exc)
        metrics.ATTEMPTS.labels("retry" if status == PENDING else status).inc()
        if status == DELIVERED:
            metrics.LATENCY.observe(time.time() - delivery.queued_at)
        metrics.github_said(self.host, outcome)
        log.info(
            "delivery %s to %s (%s %s) attempt %d: %s%s%s",
            delivery.id, delivery.target, delivery.kind, delivery.event_type, delivery.attempts + 1,
            status if status != PENDING else "retry in %.1fs" % (next_at - time.time()),
            f", GitHub {outcome.http_status}" if outcome.http_status else "",
            f", {outcome.error}" if outcome.error else "",
            extra={"delivery_id": delivery.id, "duration_ms": round((time.monotonic() - started) * 1000)},
        )
        return True
