"""Quay's side in /metrics: what the latest watch kept in the store (watch.py), read at scrape time, so that every
worker and replica shows the same whoever watched."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..outbox import Outbox, StoreUnavailable
from .watch import load_state

_PER_NOTIFICATION = (
    ("failures", "quay_dispatch_quay_notification_failures",
     "The relay's Quay notification's failures in a row (Quay disables it at 3), by repository and event"),
    ("disabled", "quay_dispatch_quay_notification_disabled",
     "1 when Quay has disabled the relay's notification (its events are dropped), by repository and event"),
    ("missing", "quay_dispatch_quay_notification_missing",
     "1 when a routed repository has no notification of the relay's for an event its routes name"),
    ("held", "quay_dispatch_quay_notification_repair_held",
     "1 when a disabled notification is not being reset: QUAY_REPAIR off, the relay not ready, backing off, or "
     "resets that did not help"),
)


class QuaySideCollector:
    """The watch's findings; nothing while no watch has run or the store cannot be read."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def collect(self):
        try:
            state = load_state(self.outbox)
        except StoreUnavailable:
            return
        if not state:
            return
        yield GaugeMetricFamily("quay_dispatch_quay_watch_timestamp_seconds",
                                "When the relay last looked at Quay's side (epoch seconds)", value=state["at"])
        api = state.get("api") or {}
        if api.get("ok_at"):
            yield GaugeMetricFamily("quay_dispatch_quay_api_last_success_timestamp_seconds",
                                    "When Quay's API last answered a whole look (epoch seconds)", value=api["ok_at"])
        yield GaugeMetricFamily("quay_dispatch_quay_api_token_refused",
                                "1 when Quay's API refused QUAY_API_TOKEN at the latest look (401, or 403 for a "
                                "missing scope)", value=1 if api.get("status") in (401, 403) else 0)
        notes = list((state.get("notifications") or {}).values())
        for field, name, text in _PER_NOTIFICATION:
            family = GaugeMetricFamily(name, text, labels=["repository", "event"])
            values: dict[tuple[str, str], float] = {}
            for entry in notes:  # two of the relay's for one event: the worse
                key = (entry["repository"], entry["event"])
                value = entry[field] if field == "failures" else bool(entry[field])
                values[key] = max(values.get(key, 0), float(value))
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            yield family
        recovered = CounterMetricFamily("quay_dispatch_quay_recovered_events",
                                        "Events Quay dropped that the relay recovered from Quay's lists, by event",
                                        labels=["event"])
        for event, count in sorted((state.get("recovered") or {}).items()):
            recovered.add_metric([event], count)
        yield recovered
        yield CounterMetricFamily("quay_dispatch_quay_notification_resets",
                                  "Disabled notifications of the relay's that it reset",
                                  value=state.get("resets_total", 0))
