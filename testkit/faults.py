"""Faults for end-to-end tests, on loopback only: a database that stops answering, a held lock, a full disk;
and the health probe that shows the service unaffected.

Each helper cleans up after itself: use them as context managers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import selectors
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests

CONNECT_TIMEOUT = 2.0  # to the proxy's target, on loopback
HOLD_LIMIT = 1 << 20  # bytes held per direction before the proxy stops reading (TCP then pushes back)
STOP_TIMEOUT = 5.0  # for a helper's thread or child process to end once told to
FILL_LIMIT = 64 << 20  # fill_disk fills small filesystems only, never the real disk
HEALTH_WITHIN = 1.0  # seconds: what a platform's health check allows


@dataclass(eq=False)
class _Flow:
    """Bytes on their way from one socket to the other, held here while the proxy is frozen."""

    src: socket.socket
    dst: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    eof: bool = False  # src has sent all it will send
    shut: bool = False  # dst has been told so


class FreezableProxy:
    """A TCP forwarder from 127.0.0.1:`port` to the target that can stop forwarding, as a server that hangs.

    Frozen, it keeps every connection open and accepts new ones, but forwards nothing:
    the kernel still acknowledges what peers send, as it does for a PostgreSQL server
    stuck mid-query. Thawed, it forwards what it held back, then carries on.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()  # held while forwarding: once freeze() returns, nothing more goes through
        self._frozen = False
        self._closed = False
        self._out_of: dict[socket.socket, _Flow] = {}  # the flow each socket feeds
        self._into: dict[socket.socket, _Flow] = {}  # the flow each socket drains
        self._selector = selectors.DefaultSelector()
        self._registered: dict[socket.socket, int] = {}
        self._thread = threading.Thread(target=self._run, name=f"FreezableProxy:{self.port}", daemon=True)
        self._thread.start()

    def url_for(self, database_url: str) -> str:
        """`database_url` (which must point at the target) rewritten to go through the proxy."""
        parts = urllib.parse.urlsplit(database_url)
        if (parts.hostname, parts.port) != self.target:
            host, port = self.target
            raise ValueError(f"{database_url} does not point at {host}:{port}, the proxy's target")
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}"))

    def freeze(self) -> None:
        """Stop forwarding in both directions, holding connections open and accepting new ones."""
        with self._lock:
            self._frozen = True
        self._wake()

    def thaw(self) -> None:
        """Forward again, starting with the bytes held back while frozen."""
        with self._lock:
            self._frozen = False
        self._wake()

    def close(self) -> None:
        """Stop the proxy and close every connection through it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"the proxy on port {self.port} did not stop within {STOP_TIMEOUT}s")

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (buffer full) or closed
            self._wake_w.send(b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    self._watch(self._wanted())
                # Bounded, so that a lost wake-up costs a second, not a hang.
                ready = self._selector.select(timeout=1.0)
                with self._lock:
                    for key, events in ready:
                        self._handle(key.fileobj, events)
                    self._settle()
        finally:
            for sock in [*self._out_of, self._listener, self._wake_r, self._wake_w]:
                sock.close()
            self._selector.close()

    def _wanted(self) -> dict[socket.socket, int]:
        """Which events each socket is to be watched for, given what the flows hold."""
        wanted: dict[socket.socket, int] = defaultdict(int)
        wanted[self._listener] = wanted[self._wake_r] = selectors.EVENT_READ
        for flow in self._out_of.values():
            if not flow.eof and len(flow.pending) < HOLD_LIMIT:
                wanted[flow.src] |= selectors.EVENT_READ
            if flow.pending and not self._frozen:
                wanted[flow.dst] |= selectors.EVENT_WRITE
        return {sock: events for sock, events in wanted.items() if events}

    def _watch(self, wanted: dict[socket.socket, int]) -> None:
        for sock in [sock for sock in self._registered if sock not in wanted]:
            self._unwatch(sock)
        for sock, events in wanted.items():
            if sock not in self._registered:
                self._selector.register(sock, events)
            elif self._registered[sock] != events:
                self._selector.modify(sock, events)
            self._registered[sock] = events

    def _unwatch(self, sock: socket.socket) -> None:
        if self._registered.pop(sock, None) is not None:
            self._selector.unregister(sock)

    def _handle(self, sock: socket.socket, events: int) -> None:
        if sock is self._listener:
            self._accept()
        elif sock is self._wake_r:
            with contextlib.suppress(BlockingIOError):
                sock.recv(4096)
        elif sock in self._out_of:  # not dropped earlier in this round
            if events & selectors.EVENT_READ:
                self._read(sock)
            if events & selectors.EVENT_WRITE and sock in self._into:
                self._write(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError:
            client.close()  # the client sees the connection refused, as it would without the proxy
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((client, server), (server, client)):
            self._out_of[src] = self._into[dst] = _Flow(src, dst)

    def _read(self, sock: socket.socket) -> None:
        flow = self._out_of[sock]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._drop(sock)
            return
        if data:
            flow.pending += data
        else:
            flow.eof = True

    def _write(self, sock: socket.socket) -> None:
        flow = self._into[sock]
        if self._frozen:  # frozen since this round's select
            return
        try:
            sent = sock.send(flow.pending)
        except BlockingIOError:
            return
        except OSError:
            self._drop(sock)
            return
        del flow.pending[:sent]

    def _settle(self) -> None:
        """Pass on end-of-stream once what came before it is through; close connections ended both ways."""
        if self._frozen:
            return
        for flow in list(self._out_of.values()):
            if flow.src not in self._out_of:
                continue  # dropped with its peer this round
            if flow.eof and not flow.pending and not flow.shut:
                try:
                    flow.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    self._drop(flow.src)
                    continue
                flow.shut = True
            if flow.shut and self._into[flow.src].shut:
                self._drop(flow.src)

    def _drop(self, sock: socket.socket) -> None:
        """Close a connection: this socket and its peer."""
        for end in (sock, self._out_of[sock].dst):
            self._unwatch(end)
            del self._out_of[end], self._into[end]
            end.close()


_LOCK_HOLDER = """
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))  # until the parent closes stdin, or time is up
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def hold_sqlite_lock(path: str | os.PathLike, seconds: float) -> Iterator[subprocess.Popen]:
    """Hold the SQLite database's write lock from another process, as an operator's long command would.

    The lock is held on entry; it is let go after `seconds` or on exit, whichever comes first.
    """
    child = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(path), str(seconds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], STOP_TIMEOUT + 5)  # the child's own busy timeout is 5 s
        if not ready or child.stdout.readline().strip() != "locked":
            child.kill()
            _, stderr = child.communicate(timeout=STOP_TIMEOUT)
            raise RuntimeError(f"the lock holder did not take the write lock on {path}: {stderr.strip()}")
        yield child
    finally:
        child.stdin.close()  # the child's cue to roll back and exit
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


@contextlib.contextmanager
def small_tmpfs(size_kib: int) -> Iterator[Path]:
    """A freshly mounted tmpfs of `size_kib` KiB, to fill; unmounted and removed on exit (skips unless root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="quay-dispatch-tmpfs-"))
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mountpoint)],
                                 capture_output=True, text=True, timeout=STOP_TIMEOUT)
        problem = mounted.stderr.strip() if mounted.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs on {mountpoint}: {problem}")
    try:
        yield mountpoint
    finally:
        # Lazy: a connection the test left open to a file there must not keep the mount.
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True, timeout=STOP_TIMEOUT)
        mountpoint.rmdir()


def fill_disk(directory: str | os.PathLike) -> Path:
    """Fill the filesystem of `directory` with one file, up to ENOSPC; that file, to delete to free the space."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free > FILL_LIMIT:
        raise ValueError(f"{directory} has {free >> 10} KiB free: fill_disk fills filesystems of at most "
                         f"{FILL_LIMIT >> 10} KiB, such as small_tmpfs()'s")
    fd, name = tempfile.mkstemp(prefix="fill-", dir=directory)
    try:
        # Smaller and smaller writes fill the last partial block too; the free space bounds the loop.
        for chunk in (bytes(65536), bytes(512), bytes(1)):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return Path(name)



class HealthProbe:
    """GET /healthz every 0.25 s in the background, as a platform does; the slowest answer is kept."""

    def __init__(self, service, test_pki):
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()

        def probe():
            while not self._stop.wait(0.25):
                started = time.monotonic()
                try:
                    status = requests.get(service.url + "/healthz", cert=test_pki.pair("quay"),
                                          verify=test_pki.ca_file, timeout=5).status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except requests.RequestException as exc:
                    self.failures.append(str(exc))
                self.times.append(time.monotonic() - started)

        self._thread = threading.Thread(target=probe, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)


def assert_healthy(probe: HealthProbe) -> None:
    assert probe.times, "the health probe never ran"
    assert not probe.failures
    assert max(probe.times) < HEALTH_WITHIN, f"slowest /healthz {max(probe.times):.2f} s, median " \
                                             f"{statistics.median(probe.times):.2f} s"


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port whose connections are taken and never answered, as behind a firewall that drops packets
    after the handshake, or in front of a dead server: the kernel accepts them into the backlog, nobody reads."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield server.getsockname()[1]


@contextlib.contextmanager
def store_locked(database_url):
    """Hold the outbox's tables locked, as a stuck writer or a full disk would leave them unwritable."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        with psycopg.connect(database_url) as conn, conn.transaction():
            conn.execute("LOCK TABLE deliveries, schema_version IN ACCESS EXCLUSIVE MODE")
            yield
