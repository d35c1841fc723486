"""GitHub's delivery rules (quay_dispatch/domain/policy.py), as tables: what an answer means, and what follows it."""

import datetime
import email.utils

import pytest
import requests

from quay_dispatch.domain.dispatch_request import DELIVERED, EXPIRED, FAILED, PENDING
from quay_dispatch.domain.policy import ACCEPTED, REFUSED, RETRY, DeliveryPolicy, Outcome, backoff, classify


def response(status, headers=None, body=b'{"message": "Bad credentials"}'):
    r = requests.Response()
    r.status_code = status
    r.headers.update(headers or {})
    r._content = body
    return r


@pytest.mark.parametrize("status, result", [
    (204, ACCEPTED), (200, ACCEPTED), (500, RETRY), (502, RETRY), (503, RETRY), (429, RETRY),
    (401, REFUSED), (404, REFUSED), (422, REFUSED), (403, REFUSED), (400, REFUSED),
])
def test_status_classes(status, result):
    assert classify(response(status)).result == result


def test_failure_keeps_githubs_message_and_request_id():
    outcome = classify(response(401, {"X-GitHub-Request-Id": "ABCD:1234"}))

    assert outcome.error == "GitHub answered 401: Bad credentials"
    assert outcome.request_id == "ABCD:1234"


def test_rate_limit_403_with_reset_is_retried_at_the_reset():
    outcome = classify(response(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1900000000"}), now=1e9)

    assert (outcome.result, outcome.retry_at) == (RETRY, 1900000000.0)


def test_retry_after_in_seconds_or_as_a_date():
    assert classify(response(429, {"Retry-After": "30"}), now=1000.0).retry_at == 1030.0
    date = email.utils.formatdate(2000000000, usegmt=True)
    assert classify(response(403, {"Retry-After": date}), now=1000.0).retry_at == 2000000000.0


NOW = 1_000_000.0
DAY = 86400.0
POLICY = DeliveryPolicy(max_age=DAY, longest_call=15.0)


@pytest.mark.parametrize("outcome, attempts, age, status, next_at, host_waits_until", [
    # GitHub took it: delivered, whatever came before.
    (Outcome(ACCEPTED, 204), 0, 0, DELIVERED, None, None),
    (Outcome(ACCEPTED, 200), 7, DAY - 1, DELIVERED, None, None),
    # GitHub refused it for good (a 401 after the App's token was renewed, a 404, a 422): failed.
    (Outcome(REFUSED, 422), 0, 0, FAILED, None, None),
    # Rate limited, with GitHub's time: retried then, and every delivery to the host waits until then.
    (Outcome(RETRY, 429, retry_at=NOW + 60), 0, 0, PENDING, NOW + 60, NOW + 60),
    (Outcome(RETRY, 403, retry_at=NOW + 3600), 3, 60, PENDING, NOW + 3600, NOW + 3600),
    # ... unless that time is past DELIVERY_MAX_AGE: expired (the host still waits).
    (Outcome(RETRY, 429, retry_at=NOW + 120), 9, DAY - 60, EXPIRED, None, NOW + 120),
    # A 5xx, a timeout, a connection error: retried after a backoff, the host not held.
    (Outcome(RETRY, 502), 0, 0, PENDING, "backoff", None),
    (Outcome(RETRY, error="cannot reach GitHub: ConnectionRefusedError"), 4, 3600, PENDING, "backoff", None),
    # ... until the backoff would end past DELIVERY_MAX_AGE: expired.
    (Outcome(RETRY, 503), 30, DAY, EXPIRED, None, None),
])
def test_what_follows_an_attempt(outcome, attempts, age, status, next_at, host_waits_until):
    decision = POLICY.decide(outcome, attempts, queued_at=NOW - age, now=NOW)

    assert (decision.status, decision.pause_host_until) == (status, host_waits_until)
    if next_at == "backoff":
        assert NOW + 0.5 <= decision.next_attempt_at <= NOW + max(0.5, min(600, 2 ** attempts))
    else:
        assert decision.next_attempt_at == next_at


@pytest.mark.parametrize("attempts, ceiling", [(1, 1), (2, 2), (3, 4), (10, 512), (11, 600), (40, 600)])
def test_backoff_is_full_jitter_under_a_doubling_ceiling_capped_at_10_minutes(attempts, ceiling):
    waits = [backoff(attempts) for _ in range(200)]

    assert all(0.5 <= wait <= max(0.5, ceiling) for wait in waits)


def test_a_lease_outlives_the_longest_call_and_the_pace_is_githubs():
    assert POLICY.lease_seconds == 20.0
    assert POLICY.writes_per_minute == 80


NEW_YEAR = datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize("header, expiry", [
    ("2027-01-02 03:04:05 UTC", NEW_YEAR),
    ("2027-01-02 03:04:05 -0800", NEW_YEAR + 8 * 3600),
    ("next tuesday", None),
    (None, None),
])
def test_the_tokens_expiry_is_read_from_githubs_header_on_any_answer(header, expiry):
    headers = {"GitHub-Authentication-Token-Expiration": header} if header else {}

    assert classify(response(204, headers)).token_expiry == expiry
    assert classify(response(401, headers)).token_expiry == expiry


@pytest.mark.parametrize("headers, remaining, reset", [
    ({"X-RateLimit-Remaining": "4999", "X-RateLimit-Reset": "1900000000"}, 4999, 1900000000.0),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1900000000"}, 0, 1900000000.0),
    ({"X-RateLimit-Remaining": "many", "X-RateLimit-Reset": "soon"}, None, None),
    ({}, None, None),  # GitHub Enterprise Server with rate limiting off sends neither
])
def test_the_rate_limit_and_its_reset_are_read_from_any_answer(headers, remaining, reset):
    for status in (204, 404):
        outcome = classify(response(status, headers))
        assert (outcome.rate_limit_remaining, outcome.rate_limit_reset) == (remaining, reset)
