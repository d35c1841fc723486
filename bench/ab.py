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
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.compare import ROOT, make_keys, ratios, rounds, start_baseline, start_ours


def checkout(revision: str | None, directory: Path, stack: ExitStack) -> Path:
    """The tree at `revision` (None: this working tree, as it is) in `directory`, removed when `stack` closes."""
    if revision is None:
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(directory), revision],
                   check=True)
    stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(directory)])
    return directory


def revision_arguments(parser: argparse.ArgumentParser) -> None:
    """BASE and CHANGED, as each benchmark that sets two revisions side by side takes them."""
    parser.add_argument("base", help="the git revision to compare against")
    parser.add_argument("changed", nargs="?", help="the git revision with the change (default: the working tree)")


def trees(args: argparse.Namespace, directory: Path, stack: ExitStack) -> dict[str, Path]:
    """The trees of args.base and args.changed ("base", "changed"), checked out under `directory`."""
    return {name: checkout(getattr(args, name), directory / f"{name}-tree", stack) for name in ("base", "changed")}


def alternate(args: argparse.Namespace, prefix: str, measure) -> dict[str, list]:
    """measure(keys, workdir, tree) for args.base and args.changed in args.rounds rounds, in an order that alternates
    from round to round; the results by name ("base", "changed"), in order."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    results: dict[str, list] = {"base": [], "changed": []}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        keys = make_keys(base, "ecdsa")
        checked_out = trees(args, base, stack)
        for i in range(args.rounds):
            for name in ("base", "changed") if i % 2 == 0 else ("changed", "base"):
                results[name].append(measure(keys, base / f"{name}-{i}", checked_out[name]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    revision_arguments(parser)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time of each server in each round")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="quay-bench-ab-"))
    keys = make_keys(base, "ecdsa")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        servers = []
        for name, tree in trees(args, base, stack).items():
            (base / name).mkdir()
            servers.append(start_ours(keys, base / name, stack, name=name, root=tree))
        (base / "nginx").mkdir()
        servers.append(start_baseline("nginx", keys, base / "nginx", stack))
        figures = {"new connection": rounds(servers, False, args)}
    report(figures)


def report(figures: dict) -> None:
    runs = figures["new connection"]
    for i, measured in enumerate(zip(*runs.values(), strict=True)):
        print(f"round {i + 1}: " + ", ".join(f"{name} {r['cpu_ms']:.2f} ms" for name, r in zip(runs, measured,
                                                                                            strict=True)))

    def ratio(top: str, bottom: str) -> str:
        mid, low, high = ratios(figures, "new connection", top, bottom)
        return f"{mid:.3f}x (rounds {low:.3f}-{high:.3f})"

    print(f"CPU per new-connection request, changed/base: {ratio('changed', 'base')}")
    print(f"  base/nginx {ratio('base', 'nginx')}, changed/nginx {ratio('changed', 'nginx')}")


if __name__ == "__main__":
    main()
