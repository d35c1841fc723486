"""What a service costs before it serves: the time from its start to the first 202, and its memory (RSS and PSS of
the master and its 2 workers), for two revisions side by side.

    .venv/bin/python -m bench.footprint BASE [CHANGED] [--rounds 5]

Each round starts BASE's service, then CHANGED's (the order alternates from round to round), each with the
image's kind of setup (file certificates, SQLite, 2 workers), measures it, and stops it. The report gives the
median of the rounds with its range. CHANGED defaults to the working tree; both run with this tree's venv.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import closing
from pathlib import Path

import requests

from bench.ab import alternate, revision_arguments
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.github import FakeGitHub
from testkit.service import Service, base_env


def measure(keys, workdir: Path, tree: Path) -> dict[str, float]:
    """Start the service of `tree`, time its first 202, read its memory once it settled, stop it."""
    workdir.mkdir()
    with closing(FakeGitHub()) as github:
        service = Service(base_env(keys, github, f"sqlite:///{workdir / 'outbox.sqlite3'}"), ["--workers", "2"],
                          workdir, root=tree)
        started = time.monotonic()
        try:
            first_202 = _first_202(service, keys, started) - started
            time.sleep(2.0)  # the deliverers' first looks, the workers' first collections
            return {"first 202 s": first_202, **_memory(service.proc.pid)}
        finally:
            service.stop()


def _first_202(service, keys, started: float) -> float:
    body = sample_body("build_success", "acme/widget")
    while time.monotonic() - started < 60:
        try:
            if send_like_quay(service.url + "/incoming", body, keys.pair("quay"), verify=keys.ca_file).status_code \
                    == 202:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise AssertionError(f"no 202 within 60 s:\n{service.log()}")


def _memory(master: int) -> dict[str, float]:
    """RSS and PSS in MiB of `master` and its children (smaps_rollup: PSS shares pages among the processes)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    totals = {"RSS MiB": 0.0, "PSS MiB": 0.0}
    for pid in [str(master), *children]:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            field, _, value = line.partition(":")
            if field in ("Rss", "Pss"):
                totals[f"{field.upper()} MiB"] += int(value.split()[0]) / 1024
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    revision_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    results = alternate(parser.parse_args(), "quay-bench-footprint-", measure)
    for field in results["base"][0]:
        line = []
        for name in ("base", "changed"):
            values = [r[field] for r in results[name]]
            line.append(f"{name} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{field}: {', '.join(line)}")


if __name__ == "__main__":
    main()
