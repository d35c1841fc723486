"""What a flood of refused calls costs /incoming, before and after a change: two revisions side by side, and the
changed one also with the operator's page on (each refusal is then kept for it).

    .venv/bin/python -m bench.refusal_bench BASE [CHANGED] [--rounds 4] [--requests 400]

Each round runs every variant once, in an order that alternates: a service (2 workers, SQLite) takes --requests
POST /incoming from a forged Quay certificate (another root: 403), a new mutual-TLS connection each, 4 at a time.
The report gives each variant's median calls per second and p99 over the rounds, and its ratio to BASE.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from contextlib import ExitStack, closing
from pathlib import Path

from bench.ab import revision_arguments, trees
from bench.compare import make_keys
from bench.relay_bench import run_phase
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.github import FakeGitHub
from testkit.service import Service, base_env, free_port


def flood(keys, workdir: Path, tree: Path, page: bool, requests: int) -> dict:
    workdir.mkdir()
    with closing(FakeGitHub()) as github:
        env = base_env(keys, github, f"sqlite:///{workdir / 'outbox.sqlite3'}")
        if page:
            env["ADMIN_BIND"] = f"127.0.0.1:{free_port()}"
        service = Service(env, ["--workers", "2"], workdir, root=tree)
        try:
            service.wait_ready(keys.pair("server"), keys.ca_file, timeout=60)
            body = sample_body("build_success", "acme/widget")
            return run_phase("refused", requests, 4, lambda: send_like_quay(
                service.url + "/incoming", body, keys.pair("other_root"), verify=keys.ca_file).status_code)
        finally:
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    revision_arguments(parser)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="quay-bench-refusals-"))
    variants = ("base", "changed", "changed, page on")
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        keys = make_keys(base, "ecdsa")
        checked_out = trees(args, base, stack)
        for i in range(args.rounds):
            for name in variants if i % 2 == 0 else reversed(variants):
                tree = checked_out["base" if name == "base" else "changed"]
                result = flood(keys, base / f"{name}-{i}".replace(" ", "").replace(",", ""), tree,
                               name.endswith("page on"), args.requests)
                assert result["statuses"] == {403: result["done"]}, result
                results[name].append(result)
    reference = statistics.median(r["rps"] for r in results["base"])
    for name, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        print(f"{name:18} {rps:7.1f} refused calls/s  p99 {p99:6.1f} ms  ({rps / reference:.3f}x base)")


if __name__ == "__main__":
    main()
