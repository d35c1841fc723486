"""What an idle service costs: the CPU of the master and its 2 workers, and the store's transactions, while no event
comes, after a first one was delivered.

    .venv/bin/python -m bench.idle_bench [--database sqlite|postgresql] [--acme] [--seconds 600]

The service runs with the image's kind of setup (file certificates, 2 workers, no page), or with its certificate
from Debian's pebble on loopback (--acme), measured once that certificate is served. One notification
is sent and delivered to a loopback GitHub; then nothing comes for --seconds, over which the CPU is read from /proc
(user and system time of every thread of the three processes), given per hour. The store's transactions are
counted after that, over a minute, without the CPU's figure: on SQLite by tracing the processes' fcntl() calls on
the database file (in WAL mode, each transaction takes a read mark in the -shm file; BEGIN IMMEDIATE also its write
lock), on PostgreSQL from pg_stat_database's committed transactions, this bench's own excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench.compare import make_keys
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.github import FakeGitHub
from testkit.pebble import DOMAIN, Pebble
from testkit.postgres import create_database, find_initdb, private_postgresql
from testkit.service import Service, base_env, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def processes(master: int) -> list[int]:
    """The master and its children (the workers)."""
    return [master, *map(int, Path(f"/proc/{master}/task/{master}/children").read_text().split())]


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of every thread of `pids` so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (the threads' included)
    return total / CLOCK_TICKS


def sqlite_locks(pids: list[int], database: Path, seconds: float) -> dict[str, int]:
    """fcntl() lock calls on the database file over `seconds`, by kind, traced in every thread of `pids`."""
    owner = {tid: str(pid) for pid in pids for tid in os.listdir(f"/proc/{pid}/task")}
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        tracer = subprocess.Popen(["strace", "-qq", "-e", "trace=fcntl", "-o", out.name,
                                   *[arg for tid in owner for arg in ("-p", tid)]], stderr=subprocess.DEVNULL)
        time.sleep(seconds)
        tracer.terminate()
        tracer.wait(10)
        trace = out.read()
    # In WAL mode the locks are on the -shm file: every transaction takes a read mark (F_RDLCK at 123 to 127), a
    # writing one (BEGIN IMMEDIATE) also the WAL's write lock (F_WRLCK at 120).
    shm = str(database.resolve()) + "-shm"
    files = {(str(pid), fd) for pid in pids for fd in os.listdir(f"/proc/{pid}/fd")
             if os.path.realpath(f"/proc/{pid}/fd/{fd}") == shm}
    taken = [(kind, int(start)) for tid, fd, kind, start in re.findall(
        r"^(\d+) +fcntl\((\d+), F_SETLKW?, \{l_type=(F_WRLCK|F_RDLCK), l_whence=SEEK_SET, l_start=(\d+)", trace, re.M)
        if (owner.get(tid), fd) in files]
    writes = sum(1 for kind, start in taken if kind == "F_WRLCK" and start == 120)
    reads = sum(1 for kind, start in taken if kind == "F_RDLCK" and 123 <= start <= 127)
    return {"transactions": reads, "of which write locks": writes}


def postgres_transactions(database_url: str, seconds: float) -> dict[str, int]:
    """Transactions committed in the outbox's database over `seconds`, this bench's two reads excluded."""
    import psycopg

    def committed() -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                                ).fetchone()[0]

    before = committed()
    time.sleep(seconds)
    return {"transactions": committed() - before - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--acme", action="store_true", help="the certificate from pebble, on loopback")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="quay-bench-idle-"))
    keys = make_keys(workdir, "ecdsa")
    with contextlib.ExitStack() as stack:
        github = FakeGitHub()
        stack.callback(github.close)
        database = workdir / "outbox.sqlite3"
        database_url = (create_database(stack.enter_context(private_postgresql(find_initdb())))
                        if args.database == "postgresql" else f"sqlite:///{database}")
        env, port = base_env(keys, github, database_url), None
        if args.acme:
            port = free_port()
            cert, key = keys.pair("server")
            pebble = Pebble(workdir, cert, key, keys.ca_file, port)
            stack.callback(pebble.stop)
            env = {k: v for k, v in env.items() if k not in ("TLS_CERT_FILE", "TLS_KEY_FILE")}
            env |= {"ACME_DOMAINS": DOMAIN, "ACME_DIRECTORY": pebble.directory, "ACME_CA_FILE": pebble.ca_file}
        service = Service(env, ["--workers", "2"], workdir, port=port)
        stack.callback(service.stop)
        service.wait_ready(keys.pair("server"), keys.ca_file if not args.acme else False, timeout=60)
        answer = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                                keys.pair("quay"), verify=keys.ca_file if not args.acme else False)
        assert answer.status_code == 202 and github.wait_for(1), answer.text
        time.sleep(5.0)  # the workers settle: their first looks and collections
        pids = processes(service.proc.pid)
        before = cpu_seconds(pids)
        time.sleep(args.seconds)
        used = cpu_seconds(pids) - before
        kind = args.database + (", ACME" if args.acme else "")
        print(f"idle CPU ({kind}, master + 2 workers, {args.seconds:.0f} s): {used:.2f} s, "
              f"{used * 3600 / args.seconds:.1f} CPU-seconds an hour")
        counted = (sqlite_locks(pids, database, 60.0) if args.database == "sqlite"
                   else postgres_transactions(database_url, 60.0))
        print("the store, over a minute idle: " + ", ".join(f"{n} {what}" for what, n in counted.items()))


if __name__ == "__main__":
    main()
