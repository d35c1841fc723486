"""The fault helpers do what they say, against the real thing: PostgreSQL, SQLite, a full filesystem."""

from __future__ import annotations

import errno
import socket
import sqlite3
import threading
import urllib.parse
from concurrent.futures import Future
from pathlib import Path

import pytest

from testkit.faults import FreezableProxy, fill_disk, hold_sqlite_lock, small_tmpfs
from testkit.service import wait_until


def in_background(call) -> Future:
    """Run `call()` in a daemon thread; its outcome as a Future, to wait for with a bound."""
    future: Future = Future()

    def run():
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


@pytest.fixture
def proxy(postgresql_server):
    """A proxy in front of the session's PostgreSQL server."""
    target = urllib.parse.urlsplit(postgresql_server)
    proxy = FreezableProxy(target.hostname, target.port)
    yield proxy
    proxy.close()  # first: a query stuck in the frozen proxy then fails instead of hanging the teardown


@pytest.fixture
def proxied(proxy, postgresql_server):
    """A psycopg connection to PostgreSQL through the proxy."""
    import psycopg

    conn = psycopg.connect(proxy.url_for(postgresql_server), autocommit=True, connect_timeout=5)
    yield conn
    proxy.close()
    conn.close()


def test_proxy_carries_a_postgresql_connection(proxied):
    assert proxied.execute("SELECT 1").fetchone() == (1,)
    # More than a socket buffer each way.
    big = "x" * 3_000_000
    assert proxied.execute("SELECT length(%s::text), repeat('y', 3000000)", (big,)).fetchone() == (3_000_000,
                                                                                                    "y" * 3_000_000)


def test_frozen_proxy_holds_a_query_until_thawed(proxy, proxied):
    proxy.freeze()
    query = in_background(lambda: proxied.execute("SELECT 1").fetchone())

    with pytest.raises(TimeoutError):
        query.result(timeout=1.0)
    proxy.thaw()

    assert query.result(timeout=5) == (1,)


def test_frozen_proxy_accepts_connections_and_completes_them_once_thawed(proxy, postgresql_server):
    import psycopg

    proxy.freeze()
    connecting = in_background(lambda: psycopg.connect(proxy.url_for(postgresql_server), connect_timeout=10))

    with pytest.raises(TimeoutError):
        connecting.result(timeout=1.0)
    proxy.thaw()

    with connecting.result(timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_frozen_proxy_holds_bytes_and_end_of_stream_until_thawed():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            FreezableProxy("127.0.0.1", listener.getsockname()[1]) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
        listener.settimeout(5)
        server, _ = listener.accept()
        with server:
            server.settimeout(0.5)
            client.sendall(b"before")
            assert server.recv(100) == b"before"

            proxy.freeze()
            client.sendall(b"during")
            with pytest.raises(TimeoutError):
                server.recv(100)
            proxy.thaw()
            assert server.recv(100) == b"during"

            proxy.freeze()
            client.shutdown(socket.SHUT_WR)
            with pytest.raises(TimeoutError):
                server.recv(100)
            proxy.thaw()
            assert server.recv(100) == b""


def test_proxy_url_for_rewrites_only_its_target():
    with FreezableProxy("127.0.0.1", 5432) as proxy:
        assert proxy.url_for("postgresql://postgres@127.0.0.1:5432/outbox") == \
            f"postgresql://postgres@127.0.0.1:{proxy.port}/outbox"
        with pytest.raises(ValueError, match="does not point at 127.0.0.1:5432"):
            proxy.url_for("postgresql://postgres@127.0.0.1:5433/outbox")


def wal_database(path: Path) -> Path:
    """A SQLite database in WAL mode, as the outbox keeps it, with one table."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (v BLOB)")
    conn.close()
    return path


def can_begin_immediate(path: Path) -> bool:
    conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "database is locked" in str(exc)
        return False
    finally:
        conn.close()


def test_lock_holder_makes_begin_immediate_fail_until_it_exits(tmp_path):
    db = wal_database(tmp_path / "outbox.sqlite3")

    with hold_sqlite_lock(db, 30):
        conn = sqlite3.connect(db, timeout=0.2, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            conn.execute("BEGIN IMMEDIATE")

    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
    conn.close()


def test_lock_holder_lets_go_after_its_seconds(tmp_path):
    db = wal_database(tmp_path / "outbox.sqlite3")

    with hold_sqlite_lock(db, 0.5) as holder:
        assert not can_begin_immediate(db)
        assert wait_until(lambda: can_begin_immediate(db), timeout=3)
        assert holder.wait(3) == 0


def test_full_tmpfs_makes_sqlite_inserts_fail_until_space_is_freed():
    with small_tmpfs(512) as directory:
        db = wal_database(directory / "outbox.sqlite3")
        conn = sqlite3.connect(db, isolation_level=None)
        # A first read maps the WAL index (-shm); a connection first used on the full disk
        # fails to create it instead, with "disk I/O error" (SQLITE_IOERR_SHMSIZE).
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        filler = fill_disk(directory)
        with pytest.raises(OSError) as full:
            (directory / "more").write_bytes(bytes(4096))
        assert full.value.errno == errno.ENOSPC

        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            conn.execute("INSERT INTO t VALUES (?)", (bytes(65536),))
        filler.unlink()

        conn.execute("INSERT INTO t VALUES (?)", (bytes(65536),))
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        conn.close()


def test_small_tmpfs_is_unmounted_and_removed_on_exit():
    with small_tmpfs(64) as directory:
        assert str(directory) in Path("/proc/mounts").read_text()

    assert str(directory) not in Path("/proc/mounts").read_text()
    assert not directory.exists()
