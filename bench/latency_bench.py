"""How long an accepted event waits for GitHub: from the 202 to the loopback GitHub's receipt, for two revisions
side by side.

    .venv/bin/python -m bench.latency_bench BASE [CHANGED] [--rounds 4] [--events 10]

Each round starts BASE's service, then CHANGED's (the order alternates), each with the image's kind of setup (file
certificates, SQLite, 2 workers), and sends --events notifications one at a time, a second apart so that its
deliverers are idle when each comes; it records when each 202 came and when GitHub received that event. The report
gives the median and the largest wait of each revision over all rounds. CHANGED defaults to the working tree.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from contextlib import closing
from pathlib import Path

from bench.ab import alternate, revision_arguments
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.github import FakeGitHub
from testkit.service import Service, base_env


def waits(keys, workdir: Path, tree: Path, events: int) -> list[float]:
    """Seconds from each 202 to GitHub's receipt of that event, for the service of `tree`."""
    workdir.mkdir()
    with closing(FakeGitHub()) as github:
        service = Service(base_env(keys, github, f"sqlite:///{workdir / 'outbox.sqlite3'}"), ["--workers", "2"],
                          workdir, root=tree)
        try:
            service.wait_ready(keys.pair("server"), keys.ca_file)
            time.sleep(2.0)  # its deliverers settle
            measured = []
            for i in range(events):
                build = str(uuid.uuid4())
                answer = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget",
                                        build_id=build), keys.pair("quay"), verify=keys.ca_file)
                accepted = time.time()
                assert answer.status_code == 202, answer.text
                received = github.wait_for(i + 1, timeout=30)
                assert len(received) == i + 1, f"event {i} not received:\n{service.log()}"
                measured.append(max(0.0, received[i].at - accepted))
                time.sleep(1.0)
            return measured
        finally:
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    revision_arguments(parser)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", type=int, default=10)
    args = parser.parse_args()
    results = alternate(args, "quay-bench-latency-", lambda keys, workdir, tree: waits(keys, workdir, tree,
                                                                                     args.events))
    for name, rounds in results.items():
        values = [wait for waits_of_round in rounds for wait in waits_of_round]
        print(f"{name}: 202 to GitHub's receipt, median {statistics.median(values) * 1000:.1f} ms, "
              f"largest {max(values) * 1000:.1f} ms ({len(values)} events)")


if __name__ == "__main__":
    main()
