"""Delivery: a background thread per worker that sends due deliveries to GitHub and retries failures.

The policy (docs/operations.md): 2xx delivered; 5xx, 429, timeouts and
connection errors retried with exponential backoff and full jitter until
DELIVERY_MAX_AGE; a rate limit pauses the whole host until GitHub's reset;
any other 4xx fails at once with GitHub's message kept.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

from . import github, metrics
from .dispatch import WORKFLOW_DISPATCH, canonical_json
from .outbox import DELIVERED, EXPIRED, FAILED, PENDING, Delivery, Outbox, StoreUnavailable

log = logging.getLogger("quay_dispatch.delivery")

POLL_INTERVAL = 1.0  # seconds between looks at the outbox when nobody wakes us
# After a look that found nothing to send (or GitHub's pace says wait), the next look comes
# no sooner than this, however often new events wake the deliverer: under a burst, requests
# then do not queue behind a claim per accepted event for the database's write lock.
MIN_LOOK_INTERVAL = 0.2
LEASE_MARGIN = 5.0  # a lease outlives the longest GitHub call by this much
BACKOFF_BASE = 1.0
BACKOFF_CAP = 600.0
PRUNE_INTERVAL = 3600.0


def backoff(attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts: exponential, capped, with full jitter."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempts - 1, 0))
    return max(0.5, random.uniform(0, ceiling))


class Deliverer:
    """Sends due deliveries for one GitHub host, one at a time across all workers."""

    def __init__(self, outbox: Outbox, client: github.GitHubClient, max_age: float, retention: float):
        self.outbox = outbox
        self.client = client
        self.host = github.host_of(client.api_url)
        self.max_age = max_age
        self.retention = retention
        # While a lease is held nothing else goes to the host, so it is kept short: a worker
        # killed mid-send delays the others by this much at most.
        self.lease_seconds = github.CONNECT_TIMEOUT + client.timeout + LEASE_MARGIN
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="deliverer", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A new delivery was stored: look at once instead of at the next poll."""
        if not self._wake.is_set():  # set() costs a lock even when the flag is already up
            self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        # A daemon thread: it ends with its worker. A send cut short by that is sent
        # again once its lease expires (delivery is at least once).
        while True:
            try:
                self._prune_when_due()
                worked = self.deliver_one()
            except StoreUnavailable as exc:
                log.warning("outbox unavailable, delivery paused: %s", exc)
                worked = False
            except Exception:  # a bug must not kill the thread and strand the outbox
                log.exception("unexpected error in the deliverer")
                worked = False
            if not worked:
                time.sleep(MIN_LOOK_INTERVAL)
                self._wake.wait(POLL_INTERVAL - MIN_LOOK_INTERVAL)
                self._wake.clear()

    def _prune_when_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_INTERVAL
        pruned = self.outbox.prune(time.time() - self.retention)
        if pruned:
            log.info("pruned %d delivered deliveries older than %.0f days", pruned, self.retention / 86400)

    def deliver_one(self) -> bool:
        """Send the next due delivery, if any; return whether there was one."""
        delivery = self.outbox.claim(self.host, self.lease_seconds)
        if delivery is None:
            return False
        started = time.monotonic()
        body, outcome = self._complete_body(delivery)
        if outcome is None:
            log.debug("delivery %s: POST %s %s", delivery.id, delivery.path, body)
            outcome = self.client.post(delivery.path, body, delivery.target)
        status, next_at = self._decide(delivery, outcome)
        # retry_at is set for rate limits only: they hold every delivery to the host.
        self.outbox.record(
            delivery, status=status, http_status=outcome.http_status, request_id=outcome.request_id,
            error=outcome.error, next_attempt_at=next_at, pause_host_until=outcome.retry_at,
        )
        metrics.ATTEMPTS.labels("retry" if status == PENDING else status).inc()
        if status == DELIVERED:
            metrics.LATENCY.observe(time.time() - delivery.queued_at)
        if outcome.rate_limit_remaining is not None:
            metrics.RATE_LIMIT_REMAINING.labels(self.host).set(outcome.rate_limit_remaining)
        log.info(
            "delivery %s to %s (%s %s) attempt %d: %s%s%s",
            delivery.id, delivery.target, delivery.kind, delivery.event_type, delivery.attempts + 1,
            status if status != PENDING else "retry in %.1fs" % (next_at - time.time()),
            f", GitHub {outcome.http_status}" if outcome.http_status else "",
            f", {outcome.error}" if outcome.error else "",
            extra={"delivery_id": delivery.id, "duration_ms": round((time.monotonic() - started) * 1000)},
        )
        return True

    def _complete_body(self, delivery: Delivery) -> tuple[str, github.Outcome | None]:
        """The body to send: a workflow_dispatch without a ref runs on the repository's default branch."""
        if delivery.kind != WORKFLOW_DISPATCH:
            return delivery.body, None
        body = json.loads(delivery.body)
        if body.get("ref") is not None:
            return delivery.body, None
        branch, outcome = self.client.default_branch(delivery.target)
        if outcome is not None:
            return delivery.body, outcome
        return canonical_json(body | {"ref": branch}), None

    def _decide(self, delivery: Delivery, outcome: github.Outcome) -> tuple[str, float | None]:
        """The delivery's new status, and when to try again if it stays pending."""
        if outcome.result == github.DELIVERED:
            return DELIVERED, None
        if outcome.result == github.FAILED:
            return FAILED, None
        next_at = outcome.retry_at or time.time() + backoff(delivery.attempts + 1)
        if next_at - delivery.queued_at > self.max_age:
            return EXPIRED, None
        return PENDING, next_at
