"""The refused calls the operator's page shows: each worker keeps them in memory, and writes them to the store once a
second in one transaction, so that a flood of bad calls costs /incoming an append, and the store 1000 rows at most.
Built with the Services when the page is on (ADMIN_BIND)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .browse import KEPT_REFUSALS, RefusedCall
from .records import StoreUnavailable
from .store import Outbox

log = logging.getLogger("quay_dispatch.admin")
FLUSH_INTERVAL = 1.0


class RefusalLog:
    """This worker's refused calls not yet in the store (the newest KEPT_REFUSALS), written by a thread."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox
        self._calls: deque[RefusedCall] = deque(maxlen=KEPT_REFUSALS)  # append and popleft are thread-safe
        self._failing = False

    def add(self, call: RefusedCall) -> None:
        self._calls.append(call)

    def start(self) -> None:
        threading.Thread(target=self._run, name="refusals", daemon=True).start()

    def flush(self) -> None:
        """Write what waits; while the store cannot take it, it is dropped (they are not events), said once."""
        batch = []
        while self._calls:
            batch.append(self._calls.popleft())
        if not batch:
            return
        try:
            self.outbox.keep_refusals(batch)
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("refused calls cannot be kept for the operator's page while the outbox is "
                            "unavailable (%s); they are logged as ever", exc)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            try:
                self.flush()
            except Exception:  # a bug must not end the thread
                log.exception("unexpected error keeping refused calls")
