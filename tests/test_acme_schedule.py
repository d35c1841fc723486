"""When to order (acme/schedule.py): pure functions, a table each."""

from __future__ import annotations

import datetime
import random

import pytest

from quay_dispatch.acme import schedule
from quay_dispatch.acme.challenge import self_signed
from quay_dispatch.acme.state import StoredCertificate

DOMAINS = ("relay.example.com",)


def test_without_ari_the_renewal_comes_once_a_third_of_the_lifetime_is_left_less_a_thirtieth_at_most():
    leaf, _ = self_signed(DOMAINS[0], datetime.timedelta(days=89))  # valid from a day ago: 90 days in all
    end = leaf.not_valid_after_utc.timestamp()
    lifetime = end - leaf.not_valid_before_utc.timestamp()

    times = [schedule.renew_at(leaf, None, random.Random(seed)) for seed in range(50)]

    assert all(end - lifetime / 3 - lifetime / 30 <= t <= end - lifetime / 3 for t in times)
    assert len(set(times)) > 1  # spread, so that replicas' certificates do not renew together


def test_a_six_day_certificate_renews_after_four_days():
    leaf, _ = self_signed(DOMAINS[0], datetime.timedelta(days=5))
    start = leaf.not_valid_before_utc.timestamp()

    assert 3.8 * 86400 <= schedule.renew_at(leaf, None) - start <= 4 * 86400


def test_ari_says_when():
    leaf, _ = self_signed(DOMAINS[0], datetime.timedelta(days=89))
    when = datetime.datetime(2027, 1, 2, 3, 4, tzinfo=datetime.UTC)

    assert schedule.renew_at(leaf, when) == when.timestamp()


@pytest.mark.parametrize("failures, low, high", [(1, 120, 150), (2, 240, 300), (5, 1920, 2400),
                                                  (20, 6 * 3600, 7.5 * 3600)])
def test_backoff_doubles_from_two_minutes_to_six_hours_with_a_quarter_of_jitter(failures, low, high):
    waits = [schedule.backoff(failures, random.Random(seed)) for seed in range(50)]

    assert all(low <= wait <= high for wait in waits)


def stored(domains=DOMAINS, issued_at=1000.0, renew_at=5000.0) -> StoredCertificate:
    return StoredCertificate("", "", domains, issued_at, renew_at)


@pytest.mark.parametrize("certificate, requested, now, reason", [
    (None, None, 0, "there is no certificate yet"),
    (stored(("old.example.com",)), None, 0, "ACME_DOMAINS changed (the certificate is for old.example.com)"),
    (stored(), 1500.0, 2000, "a renewal was asked for (flask --app app certificate renew)"),
    (stored(), 500.0, 2000, None),  # asked before this certificate was issued: it is the answer
    (stored(), None, 5000, "it is inside its renewal window"),
    (stored(), None, 4999, None),
])
def test_an_order_is_due_for_these_reasons_only(certificate, requested, now, reason):
    assert schedule.order_due(certificate, DOMAINS, requested, now) == reason
