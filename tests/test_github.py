"""How a GitHub answer is classified: delivered, retry (when), or failed for good."""

import email.utils

import pytest
import requests

from quay_dispatch.github import ACCEPTED, REFUSED, RETRY, classify


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
