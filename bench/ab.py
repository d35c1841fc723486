"""Did a change cut the CPU of a new connection? Two revisions of the service side by side, with nginx.

    .venv/bin/python -m bench.ab BASE [CHANGED]

BASE and CHANGED are git revisions (CHANGED defaults to the working tree). Each is
checked out into a temporary directory and run with this tree's venv; both services
and nginx run side by side, and are measured in rounds as bench.compare measures
(ECDSA keys, 2 workers each, a new TLS connection per request), in an order that
alternates from round to round. The report gives each round's figures, then the
median of the rounds' CHANGED/BASE ratio with its range.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, closing
from pathlib import Path

from bench.compare import Server, client_context, make_keys, measure, start_baseline
from testkit.github import FakeGitHub
from testkit.pki import PKI
from testkit.service import ROOT, LoggedProcess, base_env, free_port, wait_for_readyz


def checkout(revision: str | None, directory: Path) -> Path:
    """The tree at `revision` (None: this working tree, as it is) in `directory`."""
    if revision is None:
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(directory), revision],
                   check=True)
    return directory


def start_tree(name: str, tree: Path, keys: PKI, workdir: Path, stack: ExitStack) -> Server:
    github = stack.enter_context(closing(FakeGitHub()))
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", str(tree / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "wsgi:app"]
    service = LoggedProcess(name, argv, tree, workdir / "gunicorn.log",
                            base_env(keys, github, f"sqlite:///{workdir / 'outbox.sqlite3'}"))
    stack.callback(service.stop)
    wait_for_readyz(f"https://127.0.0.1:{port}", keys.pair("server"), keys.ca_file, service.exited, service.log)
    return Server(name, service.proc.pid, port, client_context(keys.ca_file, keys.pair("quay")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the git revision to compare against")
    parser.add_argument("changed", nargs="?", help="the git revision with the change (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time of each server in each round")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="quay-bench-ab-"))
    keys = make_keys(base, "ecdsa")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        servers = []
        for name, revision in (("base", args.base), ("changed", args.changed)):
            tree = checkout(revision, base / f"{name}-tree")
            if tree != ROOT:
                stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
            (base / name).mkdir()
            servers.append(start_tree(name, tree, keys, base / name, stack))
        (base / "nginx").mkdir()
        servers.append(start_baseline("nginx", keys, base / "nginx", stack))
        cpu: dict[str, list[float]] = {server.name: [] for server in servers}
        for i in range(args.rounds):
            for server in servers if i % 2 == 0 else reversed(servers):
                cpu[server.name].append(measure(server.pid, server.port, server.context, False, args.seconds)["cpu_ms"])
            print(f"round {i + 1}: " + ", ".join(f"{name} {ms[-1]:.2f} ms" for name, ms in cpu.items()), flush=True)
    report(cpu)


def report(cpu: dict[str, list[float]]) -> None:
    def ratio(top: str, bottom: str) -> str:
        each = sorted(a / b for a, b in zip(cpu[top], cpu[bottom], strict=True))
        return f"{statistics.median(each):.3f}x (rounds {each[0]:.3f}-{each[-1]:.3f})"

    print(f"CPU per new-connection request, changed/base: {ratio('changed', 'base')}")
    print(f"  base/nginx {ratio('base', 'nginx')}, changed/nginx {ratio('changed', 'nginx')}")


if __name__ == "__main__":
    main()
