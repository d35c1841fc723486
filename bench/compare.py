"""`make bench`: what a notification costs, side by side with nginx and with stock gunicorn + Flask.

For each certificate key type (ECDSA P-256, RSA-2048), the three servers are started
on 127.0.0.1 with 2 workers each and driven by 8 concurrent senders presenting a client
certificate, with a new TLS connection per request and with keep-alive. The servers
run side by side and are measured in rounds, each server once a round, in an order
that alternates from round to round: the VM's speed drifts by 25 to 55% over a minute
here, so a ratio is taken within a round (servers measured seconds apart), and the
median over the rounds is reported with its range. The steal is printed.

- ours: the service (TLS worker, identity, parsing, routing, durable SQLite commit,
  delivery to a loopback GitHub), each notification a new build;
- nginx: Debian's nginx answering 204, `ssl_verify_client optional_no_ca` (its client
  certificate carries serverAuth+clientAuth: nginx refuses serverAuth-only ones);
- flask: stock gunicorn (gthread, stdlib TLS, CERT_OPTIONAL) with a Flask app answering 204.

Server CPU milliseconds per request (master and workers, from /proc) is the fair
figure on a 2-core box shared with the load generator. Also: p99 of the time to the
202 at a steady 50 notifications a second, and the servers' RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from quay_dispatch.tools import pki
from quay_dispatch.tools.sample import sample_body
from testkit.github import FakeGitHub
from testkit.pki import PKI, make_pki
from testkit.service import Service, base_env, free_port, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
SENDERS = 8
TICKS = os.sysconf("SC_CLK_TCK")
NGINX_CONF = """
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert}; ssl_certificate_key {key};
        ssl_client_certificate {ca}; ssl_verify_client optional_no_ca;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 204; }}
    }}
}}
"""
FLASK_APP = """from flask import Flask
app = Flask(__name__)


@app.post("/incoming")
def incoming():
    return "", 204
"""


NEW_KEY = {"ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
           "rsa": lambda: rsa.generate_private_key(65537, 2048)}


def make_keys(directory: Path, kind: str) -> PKI:
    """The tests' PKI with `kind` keys (ecdsa or rsa) in its genuine chain, and "client": Quay's
    certificate with clientAuth added, the one the baselines' stock TLS can accept."""
    keys = make_pki(directory, new_key=NEW_KEY[kind])
    keys.add("client", pki.issue("quay.io", issuer=keys.intermediate, names=["quay.io"], key=keys.issued["quay"].key,
                                 eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
             keys.intermediate)
    return keys


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (gunicorn's and nginx's workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return [pid, *children]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def steal_ticks() -> int:
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[8])


def request_bytes(port: int) -> bytes:
    body = sample_body("build_success", "acme/widget", build_id=str(uuid.uuid4()))
    import json

    data = json.dumps(body).encode()
    return (b"POST /incoming HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(data))) + data


def read_response(conn: ssl.SSLSocket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1])


def drive(port: int, context: ssl.SSLContext, keepalive: bool, seconds: float, rate: float | None = None) -> dict:
    """SENDERS threads for `seconds` (or a steady `rate` a second); latencies and statuses."""
    stop_at = time.monotonic() + seconds
    latencies, statuses, lock = [], {}, threading.Lock()
    interval = SENDERS / rate if rate else 0.0

    def sender(offset: float):
        conn = None
        next_at = time.monotonic() + offset
        while time.monotonic() < stop_at:
            if interval:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                               server_hostname="127.0.0.1")
                conn.sendall(request_bytes(port))
                status = read_response(conn)
            except (OSError, ssl.SSLError):
                status = 0
                conn = None
            if not keepalive and conn is not None:
                conn.close()
                conn = None
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=sender, args=(i * interval / SENDERS,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    latencies.sort()
    return {"n": len(latencies), "statuses": statuses, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000}


def measure(pid: int, port: int, context: ssl.SSLContext, keepalive: bool, seconds: float) -> dict:
    """One run: throughput, latency, server CPU per request, steal."""
    drive(port, context, keepalive, 1.0)  # warm-up
    pids = process_tree(pid)
    cpu, steal, started = cpu_seconds(pids), steal_ticks(), time.perf_counter()
    result = drive(port, context, keepalive, seconds)
    wall = time.perf_counter() - started
    result.update(rps=result["n"] / wall, cpu_ms=(cpu_seconds(pids) - cpu) * 1000 / max(result["n"], 1),
                  steal=(steal_ticks() - steal) / TICKS / wall / os.cpu_count() * 100, rss=rss_mb(pids))
    return result


def client_context(ca: str, pair: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(*pair)
    return context


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class Server:
    """A server under measurement: its process tree's root, its port, the client context it takes."""

    name: str
    pid: int
    port: int
    context: ssl.SSLContext


def start_ours(keys: PKI, workdir: Path, stack: ExitStack, name: str = "ours", root: Path = ROOT) -> Server:
    """The service of the tree at `root` (this one by default), with its loopback GitHub."""
    github = stack.enter_context(closing(FakeGitHub()))
    service = Service(base_env(keys, github, f"sqlite:///{workdir / 'outbox.sqlite3'}"), ["--workers", "2"], workdir,
                      root=root)
    stack.callback(service.stop)
    service.wait_ready(keys.pair("server"), keys.ca_file)
    return Server(name, service.proc.pid, service.port, client_context(keys.ca_file, keys.pair("quay")))


def start_baseline(name: str, keys: PKI, workdir: Path, stack: ExitStack) -> Server:
    port = free_port()
    cert, key = keys.pair("server")
    if name == "nginx":
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, port=port, cert=cert, key=key, ca=keys.ca_file))
        command = ["nginx", "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
    else:
        (workdir / "flask204.py").write_text(FLASK_APP)
        command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "8",
                   "--bind", f"127.0.0.1:{port}", "--certfile", cert, "--keyfile", key,
                   "--ca-certs", keys.ca_file, "--cert-reqs", "1", "--no-control-socket", "flask204:app"]
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    stack.callback(stop_process_group, proc)
    wait_port(port)
    time.sleep(0.5)
    return Server(name, proc.pid, port, client_context(keys.ca_file, keys.pair("client")))


def rounds(servers: list[Server], keepalive: bool, args) -> dict[str, list[dict]]:
    """`args.rounds` rounds, each measuring every server once; the order is reversed every other round."""
    results: dict[str, list[dict]] = {server.name: [] for server in servers}
    for i in range(args.rounds):
        for server in servers if i % 2 == 0 else reversed(servers):
            results[server.name].append(measure(server.pid, server.port, server.context, keepalive, args.seconds))
    return results


def run_kind(keys: PKI, base: Path, args) -> dict:
    """Every figure for one key type: the servers started side by side, then measured in rounds."""
    with ExitStack() as stack:
        servers = []
        for name, start in (("ours", start_ours), ("nginx", partial(start_baseline, "nginx")),
                            ("flask", partial(start_baseline, "flask"))):
            workdir = base / name
            workdir.mkdir()
            servers.append(start(keys, workdir, stack))
        figures = {"new connection": rounds(servers, False, args), "keep-alive": rounds(servers, True, args)}
        ours = servers[0]
        figures["50/s p99"] = drive(ours.port, ours.context, False, args.seconds, rate=50.0)
        figures["rss"] = {server.name: rss_mb(process_tree(server.pid)) for server in servers}
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time of each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every server once")
    parser.add_argument("--keys", nargs="+", default=["ecdsa", "rsa"], choices=["ecdsa", "rsa"])
    args = parser.parse_args()
    if not shutil.which("nginx"):
        sys.exit("nginx is not installed: `make bench` installs Debian's nginx-light as root")

    for kind in args.keys:
        base = Path(tempfile.mkdtemp(prefix=f"quay-bench-{kind}-"))
        try:
            report(kind, run_kind(make_keys(base, kind), base, args))
        finally:
            shutil.rmtree(base, ignore_errors=True)


def ratios(figures: dict, mode: str, ours: str, baseline: str) -> tuple[float, float, float]:
    """The median, lowest and highest of the rounds' CPU ratios ours/baseline."""
    each = sorted(o["cpu_ms"] / b["cpu_ms"] for o, b in zip(figures[mode][ours], figures[mode][baseline], strict=True))
    return statistics.median(each), each[0], each[-1]


def report(kind: str, figures: dict) -> None:
    print(f"\n== {kind.upper()} certificates, 2 workers, {SENDERS} senders; medians of "
          f"{len(figures['new connection']['ours'])} rounds ==")
    print(f"{'server':<8} {'mode':<15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} "
          f"{'range':>11} {'steal %':>8} {'RSS MB':>7}  statuses")
    for name in ("ours", "nginx", "flask"):
        for mode in ("new connection", "keep-alive"):
            runs = figures[mode][name]
            cpu = sorted(r["cpu_ms"] for r in runs)
            statuses: dict[int, int] = {}
            for r in runs:
                for status, n in r["statuses"].items():
                    statuses[status] = statuses.get(status, 0) + n

            def median(key, runs=runs):
                return statistics.median(r[key] for r in runs)

            print(f"{name:<8} {mode:<15} {median('rps'):8.1f} {median('p50'):8.1f} {median('p99'):8.1f} "
                  f"{statistics.median(cpu):11.2f} {f'{cpu[0]:.2f}-{cpu[-1]:.2f}':>11} {median('steal'):8.1f} "
                  f"{figures['rss'][name]:7.1f}  {statuses}")

    def ratio(mode, baseline):
        mid, low, high = ratios(figures, mode, "ours", baseline)
        return f"{mid:.2f}x (rounds {low:.2f}-{high:.2f})"

    steady = figures["50/s p99"]
    print(f"ratios: CPU per new-connection request, ours/nginx {ratio('new connection', 'nginx')} "
          f"(target <= 1.9x, issue 10); ours/flask {ratio('new connection', 'flask')}")
    print(f"        CPU per keep-alive request, ours/flask {ratio('keep-alive', 'flask')} (target <= 2x); "
          f"ours/nginx {ratio('keep-alive', 'nginx')}")
    print(f"        p99 to the 202 at 50 notifications/s: {steady['p99']:.1f} ms (target < 25 ms), "
          f"{steady['n']} sent, statuses {steady['statuses']}")
    print(f"        RSS master + 2 workers: {figures['rss']['ours']:.1f} MB (target < 150 MB)")


if __name__ == "__main__":
    main()
