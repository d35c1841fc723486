"""What becomes of a delivery after each attempt: GitHub's delivery rules, in one place.

After an attempt, the delivery is:

- delivered, on a 2xx; the host's retries waiting out a backoff come forward;
- retried at GitHub's time, on a 403 or 429 with Retry-After or x-ratelimit-remaining 0;
  every delivery to the host waits until then;
- retried after a backoff (full jitter under 1, 2, 4 ... s, capped at 10 minutes), on a
  429 without a time, a 5xx, a timeout or a connection error;
- failed for good, GitHub's message kept, on a 401 (an App's token is renewed once
  first), 404, 422 or any other 4xx;
- expired, when its next try would come more than DELIVERY_MAX_AGE after it was queued.

Pacing: one delivery per GitHub host in flight across every worker and replica,
at most WRITES_PER_MINUTE a minute, none while the host waits. A lease (the right
to send one delivery) lasts the longest GitHub call plus LEASE_MARGIN, so a worker
killed mid-send holds the host up no longer than that.

The GitHub client reports what GitHub answered (an Outcome, via `classify`); the
outbox stores what `DeliveryPolicy.decide` says. docs/operations.md tells operators the same.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import time
from dataclasses import dataclass

import requests

from .dispatch_request import DELIVERED, EXPIRED, FAILED, PENDING

# What GitHub made of one attempt (Outcome.result); the outbox has its own statuses for the delivery.
ACCEPTED, RETRY, REFUSED = "accepted", "retry", "refused"
WRITES_PER_MINUTE = 80  # GitHub's limit on content-creating requests, per host
LEASE_MARGIN = 5.0  # seconds a lease outlives the longest GitHub call
BACKOFF_BASE = 1.0  # seconds: the ceiling of the first retry's wait, doubled for each next one
BACKOFF_CAP = 600.0
MIN_BACKOFF = 0.5
MAX_ERROR_LENGTH = 300


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: accepted, retry (not before retry_at, if set) or refused for good."""

    result: str
    http_status: int | None = None
    request_id: str | None = None
    error: str | None = None
    retry_at: float | None = None
    rate_limit_remaining: int | None = None
    token_expiry: float | None = None  # epoch seconds, from github-authentication-token-expiration
    rate_limit_reset: float | None = None  # epoch seconds, from x-ratelimit-reset
    duration_ms: int | None = None  # how long the attempt took, GitHub's calls for it included
    run_id: int | None = None  # the workflow run a workflow_dispatch started, where GitHub names it
    run_url: str | None = None  # that run's page


@dataclass(frozen=True)
class Decision:
    """The delivery's new status; when to try it again if it stays pending; until when its host waits."""

    status: str
    next_attempt_at: float | None = None
    pause_host_until: float | None = None


class DeliveryPolicy:
    """Decides after each attempt, from the delivery's age and attempts; knows the lease and the pace."""

    writes_per_minute = WRITES_PER_MINUTE

    def __init__(self, max_age: float, longest_call: float):
        self.max_age = max_age  # DELIVERY_MAX_AGE, from when the event was queued
        self.lease_seconds = longest_call + LEASE_MARGIN

    def decide(self, outcome: Outcome, attempts: int, queued_at: float, now: float | None = None) -> Decision:
        """What follows `outcome`, the delivery's attempt number `attempts + 1`, queued at `queued_at`."""
        if outcome.result == ACCEPTED:
            return Decision(DELIVERED)
        if outcome.result == REFUSED:
            return Decision(FAILED)
        now = time.time() if now is None else now
        # retry_at is set for rate limits only: they hold every delivery to the host.
        next_at = outcome.retry_at or now + backoff(attempts + 1)
        if next_at - queued_at > self.max_age:
            return Decision(EXPIRED, pause_host_until=outcome.retry_at)
        return Decision(PENDING, next_at, pause_host_until=outcome.retry_at)


def backoff(attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts: exponential, capped, with full jitter."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempts - 1, 0))
    return max(MIN_BACKOFF, random.uniform(0, ceiling))


def classify(response: requests.Response, now: float | None = None) -> Outcome:
    """What GitHub's answer means for the attempt (the table above)."""
    status = response.status_code
    request_id = response.headers.get("X-GitHub-Request-Id")
    remaining_text = response.headers.get("X-RateLimit-Remaining", "")
    remaining = int(remaining_text) if remaining_text.isdigit() else None  # GHES often sends none
    reset_text = response.headers.get("X-RateLimit-Reset", "")
    said = dict(rate_limit_remaining=remaining, token_expiry=token_expiry(response),
                rate_limit_reset=float(reset_text) if reset_text.isdigit() else None)
    if 200 <= status < 300:
        return Outcome(ACCEPTED, status, request_id, **said, **started_run(response))
    message = f"GitHub answered {status}: {message_of(response)}"
    retry_at = rate_limit_reset(response, now)
    if status in (403, 429) and retry_at is not None:
        return Outcome(RETRY, status, request_id, "rate limited; " + message, retry_at, **said)
    if status == 429 or status >= 500:
        return Outcome(RETRY, status, request_id, message, **said)
    return Outcome(REFUSED, status, request_id, message, **said)


def started_run(response: requests.Response) -> dict:
    """The workflow run a workflow_dispatch started, as run_id and run_url, where GitHub's answer names it (a 200
    to return_run_details); else nothing."""
    answer = json_object(response) if response.status_code == 200 else {}
    run_id, url = answer.get("workflow_run_id"), answer.get("html_url")
    if isinstance(run_id, int) and isinstance(url, str) and url.startswith("https://"):
        return {"run_id": run_id, "run_url": url[:500]}
    return {}


def token_expiry(response: requests.Response) -> float | None:
    """When the token expires, as GitHub says with every answer to an expiring token ("2026-12-31 23:59:59 UTC",
    or with an offset); None when it says nothing readable."""
    text = response.headers.get("GitHub-Authentication-Token-Expiration", "").strip()
    for layout in ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S %z"):
        try:
            when = datetime.datetime.strptime(text, layout)
        except ValueError:
            continue
        return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()
    return None


def rate_limit_reset(response: requests.Response, now: float | None = None) -> float | None:
    """When a rate-limited request may be retried: Retry-After, else x-ratelimit-reset when none remain."""
    now = time.time() if now is None else now
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return now + int(retry_after)
        try:
            return email.utils.parsedate_to_datetime(retry_after).timestamp()
        except (TypeError, ValueError):
            pass
    if response.headers.get("X-RateLimit-Remaining") == "0":
        reset = response.headers.get("X-RateLimit-Reset", "")
        if reset.isdigit():
            return float(reset)
    return None


def json_object(response: requests.Response) -> dict:
    """GitHub's answer as a JSON object; an empty one when it is none (a proxy's HTML page, a list)."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def message_of(response: requests.Response) -> str:
    """GitHub's message in an error answer, on one line and short."""
    message = json_object(response).get("message")
    text = message if isinstance(message, str) else response.text.strip() or response.reason or ""
    return " ".join(text.split())[:MAX_ERROR_LENGTH]
