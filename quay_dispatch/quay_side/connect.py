"""`quay connect`: create the notifications the routes want and Quay lacks, then (--test) have Quay send each one's
test notification and wait for it: the proof, from Quay's side, that the path works."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import Settings
from ..outbox import Outbox
from .api import QuayAPI, QuayAPIError
from .seen import last_heard
from .survey import TITLE, Row, survey, webhook_url

Say = Callable[[str], None]
POLL = 0.5  # seconds between two looks for the tests' arrival


def connect_missing(api: QuayAPI, settings: Settings, outbox: Outbox, dry_run: bool, say: Say) -> tuple[int, bool]:
    """Create each missing notification (or say it would); the number created, and whether anything went wrong."""
    found = survey(api, settings.routes, settings.public_url, {})
    for problem in found.problems:
        say(f"PROBLEM: {problem}")
    created = 0
    for row in found.missing():
        url = webhook_url(settings.public_url, row.event, None)  # as shown: the token is left out
        if dry_run:
            say(f"would create: {row.repository} {row.event} -> {url}")
            continue
        try:
            made = api.create_notification(row.repository, row.event,
                                           webhook_url(settings.public_url, row.event, settings.incoming_token),
                                           TITLE.format(event=row.event))
        except QuayAPIError as exc:
            say(f"PROBLEM: {row.repository} {row.event}: not created: {exc}")
            found.problems.append(str(exc))
            continue
        created += 1
        say(f"created: {row.repository} {row.event} -> {url} ({made.uuid})")
    wanted = [row for row in found.rows if row.wanted]
    if not found.missing():
        say(f"nothing to create: each of the {len(wanted)} notifications the routes want is there")
    elif dry_run:
        say(f"{len(found.missing())} to create; nothing was changed (--dry-run)")
    for row in found.rows:
        if row.wanted and row.notification and row.notification.disabled:
            say(f"disabled by Quay: {row.repository} {row.event} ({row.notification.failures} failures): "
                "`flask --app app quay repair` turns it back on")
    return created, bool(found.problems)


def test_each(api: QuayAPI, settings: Settings, outbox: Outbox, wait: float, say: Say) -> bool:
    """Ask Quay for each of the relay's notifications' test, wait up to `wait` seconds for them to arrive, and say
    which did and which did not, with the likely reason; whether any did not."""
    found = survey(api, settings.routes, settings.public_url, {})
    rows = [row for row in found.rows if row.wanted and row.notification]
    asked = time.time()
    pending: list[Row] = []
    for row in rows:
        if row.notification.disabled:
            say(f"not arrived: {row.repository} {row.event}: Quay disabled the notification "
                f"({row.notification.failures} failures), and drops its tests: `flask --app app quay repair`")
            continue
        try:
            api.send_test(row.repository, row.notification.uuid)
            pending.append(row)
        except QuayAPIError as exc:
            say(f"not arrived: {row.repository} {row.event}: Quay would not send the test: {exc}")
    deadline = time.monotonic() + wait
    arrived: set[tuple[str, str]] = set()
    while pending and time.monotonic() < deadline and len(arrived) < len(pending):
        time.sleep(POLL)
        heard = last_heard(outbox)
        arrived |= {key for row in pending if heard.get(key := (row.repository, row.event), 0) >= asked}
    failed = len(rows) > len(pending)
    for row in pending:
        if (row.repository, row.event) in arrived:
            say(f"arrived: {row.repository} {row.event}")
            continue
        failed = True
        say(f"not arrived: {row.repository} {row.event} within {wait:.0f} s: {_likely_reason(api, row)}")
    return failed


def _likely_reason(api: QuayAPI, row: Row) -> str:
    """Why a test did not arrive, from what Quay now says of the notification."""
    try:
        now = next((n for n in api.notifications(row.repository) if n.uuid == row.notification.uuid), None)
    except QuayAPIError as exc:
        return f"and Quay's API cannot say more ({exc})"
    if now is not None and now.failures > row.notification.failures:
        return ("Quay called and failed: the relay refused it (its /refusals page and log say why: a client "
                "certificate, INCOMING_TOKEN, a route) or Quay could not reach PUBLIC_URL (DNS, firewall, TLS)")
    return ("Quay has not called yet: its notification worker may be busy or stopped; wait, or look at Quay's "
            "worker logs")
