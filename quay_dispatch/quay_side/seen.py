"""When each event of each repository last came through from Quay (a call proved to be Quay's, answered 2xx): what
`quay` shows beside each notification, how `quay connect --test` knows that a test arrived, and how the watch knows
that a repaired notification works. Kept in the store's shared values (one per repository and event), written by the
worker that answers Quay, never at the cost of Quay's answer: a store that cannot take it is skipped."""

from __future__ import annotations

import logging
import time

from ..outbox import Outbox, StoreUnavailable

PREFIX = "quay-seen:"
log = logging.getLogger("quay_dispatch.quay")


def heard(outbox: Outbox, subject: str, event: str) -> None:
    """Quay (proved to be Quay) called with `event` of `subject`, and was answered 2xx."""
    try:
        outbox.store(f"{PREFIX}{subject}|{event}", f"{time.time():.3f}")
    except StoreUnavailable as exc:
        log.debug("when Quay last called is not kept this time: %s", exc)


def last_heard(outbox: Outbox) -> dict[tuple[str, str], float]:
    """When the relay last heard each (repository, event) from Quay."""
    found = {}
    for name, value in outbox.load_prefixed(PREFIX).items():
        subject, _, event = name[len(PREFIX):].rpartition("|")
        found[(subject, event)] = float(value)
    return found
