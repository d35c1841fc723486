"""What the watch of Quay's side costs (issue 33): requests to Quay, CPU and store transactions per look, for N routed
repositories, against a loopback Quay; and the store's transactions of an idle service's workers between looks.

    .venv/bin/python -m bench.quay_watch_bench [--repositories 10,100,500] [--looks 5]

Each look is a whole one, unpaced (as `quay repair` runs it): the paced watch spreads the same calls over half its
interval. A quiet look (every notification well) reads no build or tag list; a look over a notification in trouble
adds one of each for its repository.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

from quay_dispatch.config import load_settings
from quay_dispatch.outbox import open_outbox
from quay_dispatch.quay_side.watch import Watch, load_state
from testkit.credentials import GITHUB_TOKEN, QUAY_API_TOKEN
from testkit.quay_api import FakeQuay, Repository

PUBLIC = "https://relay.example.com"


def counted(outbox) -> list[int]:
    """Count the outbox's transactions from now on (one list cell, incremented)."""
    count, opened = [0], outbox._transaction

    def transaction(*keys):
        count[0] += 1
        return opened(*keys)

    outbox._transaction = transaction
    return count


def run(repositories: int, looks: int, workdir: Path) -> dict[str, float]:
    with closing(FakeQuay(page_size=100)) as quay:
        for i in range(repositories):
            quay.repositories[f"acme/r{i}"] = Repository()
            quay.add_notification(f"acme/r{i}", "build_success", f"{PUBLIC}/incoming/build_success")
        settings = load_settings({"GITHUB_TOKEN": GITHUB_TOKEN, "ROUTES": "acme/*", "QUAY_API_TOKEN": QUAY_API_TOKEN,
                                  "QUAY_API_URL": quay.url, "PUBLIC_URL": PUBLIC,
                                  "DATABASE_URL": f"sqlite:///{workdir / f'outbox-{repositories}.sqlite3'}"})
        outbox = open_outbox(settings.database_url)
        outbox.migrate()
        watch = Watch(settings, outbox, lambda: None, "api.github.com")
        transactions = counted(outbox)
        cpu, requests, stored = [], [], []
        for _ in range(looks):
            before, asked, done = time.process_time(), len(quay.requests), transactions[0]
            watch.look(load_state(outbox), force=True)
            cpu.append((time.process_time() - before) * 1000)
            requests.append(len(quay.requests) - asked)
            stored.append(transactions[0] - done)
        return {"requests": statistics.median(requests), "cpu ms": statistics.median(cpu),
                "transactions": statistics.median(stored) + 1}  # + the lease the watch's turn takes first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", default="10,100,500")
    parser.add_argument("--looks", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        print(f"{'repositories':>12} {'requests/look':>14} {'CPU ms/look':>12} {'store transactions/look':>24}")
        for n in (int(n) for n in args.repositories.split(",")):
            found = run(n, args.looks, Path(directory))
            print(f"{n:>12} {found['requests']:>14.0f} {found['cpu ms']:>12.1f} {found['transactions']:>24.0f}")
    print("Between looks, each other worker takes the lease once an interval: 1 transaction, failed.")


if __name__ == "__main__":
    main()
