"""The state every worker and replica shares beside deliveries (outbox/shared.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

from quay_dispatch.outbox import open_outbox


def opened(database_url):
    store = open_outbox(database_url)
    store.migrate()
    return store


def test_values_are_stored_replaced_listed_by_prefix_and_deleted(database_url):
    store, other_worker = opened(database_url), opened(database_url)

    store.store("acme:certificate", "first")
    store.store("acme:certificate", "second")
    store.store("acme:challenge:a.example", "token-a")
    store.store("acme_challenge:b.example", "not under the prefix: '_' is no wildcard")

    assert other_worker.load("acme:certificate") == "second"
    assert other_worker.load_prefixed("acme:challenge:") == {"acme:challenge:a.example": "token-a"}
    store.store("acme:certificate", None)
    assert other_worker.load("acme:certificate") is None
    assert other_worker.load("never:stored") is None


def test_a_lease_has_one_holder_until_it_is_given_back_or_expires(database_url):
    store = opened(database_url)

    assert store.lock("acme:order", "worker-1", 0.5)
    assert not store.lock("acme:order", "worker-2", 60)
    assert store.lock("acme:order", "worker-1", 0.5)  # extended by its holder
    store.unlock("acme:order", "worker-2")  # not theirs: nothing happens
    assert not store.lock("acme:order", "worker-2", 60)
    time.sleep(0.6)
    assert store.lock("acme:order", "worker-2", 60)  # expired
    store.unlock("acme:order", "worker-2")
    assert store.lock("acme:order", "worker-3", 60)


def test_of_many_workers_asking_at_once_exactly_one_gets_the_lease(database_url):
    stores = [opened(database_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    taken = []

    def ask(i: int) -> None:
        barrier.wait()
        if stores[i].lock("acme:order", f"worker-{i}", 60):
            taken.append(i)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(taken) == 1
