"""An idle service is idle: nothing looks at the store, or wakes to look at nothing, while no event comes."""

from __future__ import annotations

import threading
import time

from quay_dispatch.outbox.watchdog import Watchdog
from testkit.service import wait_until


def test_the_store_watchdog_parks_while_no_transaction_is_in_flight():
    watchdog = Watchdog()
    with watchdog.guard(time.monotonic() + 5, lambda: None):
        assert wait_until(lambda: watchdog.looks >= 2, timeout=5)  # it looks while one is in flight
    assert wait_until(lambda: watchdog._parked, timeout=5)
    looks = watchdog.looks
    time.sleep(0.5)  # five ticks' worth
    assert watchdog.looks == looks


def test_a_transaction_after_a_long_park_is_still_interrupted_at_its_deadline():
    watchdog, interrupted = Watchdog(), threading.Event()
    with watchdog.guard(time.monotonic() + 5, lambda: None):
        pass
    assert wait_until(lambda: watchdog._parked, timeout=5)
    time.sleep(0.3)
    with watchdog.guard(time.monotonic() + 0.2, interrupted.set):
        assert interrupted.wait(5)  # the guard woke it: the deadline was kept
