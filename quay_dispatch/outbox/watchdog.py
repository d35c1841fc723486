"""Deadlines for the store's transactions, and a warning for a slow one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SLOW = 1.0  # seconds: a transaction slower than this is logged as a warning, with its cause
WATCHDOG_TICK = 0.1  # seconds between the watchdog's looks at transactions in flight

log = logging.getLogger("quay_dispatch.outbox")


class Watchdog:
    """Interrupts transactions still running at their deadline; one thread per outbox, started on first use.

    While a transaction is in flight it looks every WATCHDOG_TICK instead of being woken per transaction: nothing
    to do on the request path but two dictionary writes (and a flag read). With none in flight it parks, and the
    next guard wakes it: an idle service's watchdog costs nothing.
    """

    def __init__(self):
        self._running: dict[object, tuple[float, Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._parked = False
        self._stopping = False
        self._unpark = threading.Event()
        self.looks = 0  # how many times it looked at the transactions in flight (the tests read it)

    @contextmanager
    def guard(self, deadline: float, interrupt: Callable[[], None]) -> Iterator[None]:
        key = object()  # this transaction's own: a late look cannot interrupt the thread's next one
        self._running[key] = (deadline, interrupt)  # before the thread is looked for: one that ends sees it
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="outbox-watchdog", daemon=True)
                    self._thread.start()
        if self._parked:  # set before the thread looks at _running one last time: no wake-up is lost
            self._parked = False
            self._unpark.set()
        try:
            yield
        finally:
            self._running.pop(key, None)

    def stop(self) -> None:
        """End the thread once nothing is in flight (the next guard starts another): gunicorn's master, which
        opened the outbox to check it, forks its workers with no thread of its own."""
        self._stopping = True
        self._unpark.set()

    def _run(self) -> None:
        while True:
            if not self._running:
                self._parked = True
                if not self._running:
                    if self._stopping and self._end():
                        return
                    self._unpark.wait()
                self._unpark.clear()
                self._parked = False
            time.sleep(WATCHDOG_TICK)
            self.looks += 1
            now = time.monotonic()
            for key, (deadline, interrupt) in list(self._running.items()):
                if deadline <= now and self._running.pop(key, None) is not None:
                    try:
                        interrupt()
                    except Exception:  # the connection may be gone already
                        log.debug("interrupting a transaction failed", exc_info=True)

    def _end(self) -> bool:
        with self._lock:  # guard() starts a thread under it, after registering: nothing registered is left alone
            if self._running:
                return False
            self._thread, self._parked, self._stopping = None, False, False
            return True


def warn_if_slow(description: str, started: float, cause: Callable[[], str]) -> None:
    """A transaction that succeeded, slowly: a warning with its cause (a failed one is the caller's to log).

    `cause` is only worked out for a slow one: this runs after every commit.
    """
    elapsed = time.monotonic() - started
    if elapsed > SLOW:
        log.warning("the outbox (%s) took %.1f s for one transaction: %s", description, elapsed, cause())
