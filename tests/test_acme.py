"""Certificates from ACME, end to end: a real gunicorn with the TLS worker orders from Debian's pebble (Let's Encrypt's
test CA), answers its tls-alpn-01 validation on its own port, and serves what it got; on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
from cryptography import x509

from quay_dispatch.acme import state
from quay_dispatch.tools.sample import sample_body
from testkit.faults import hold_sqlite_lock
from testkit.pebble import DOMAIN, Pebble, session_for
from testkit.service import ROOT, free_port, free_ports, run_flask, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def acme_env(pebble: Pebble) -> dict[str, str | None]:
    return {"TLS_CERT_FILE": None, "TLS_KEY_FILE": None, "ACME_DOMAINS": DOMAIN, "ACME_DIRECTORY": pebble.directory,
            "ACME_CA_FILE": pebble.ca_file, "ACME_EMAIL": "ops@example.test"}


def served_certificate(port: int, client=None, alpn=None, name=DOMAIN) -> x509.Certificate:
    """The certificate a client asking for `name` gets on `port` (`client`: its certificate pair)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if client:
        ctx.load_cert_chain(*client)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def pebbles_serial(port: int, client) -> int | None:
    """The serial of the certificate served on `port` if pebble issued it, else None."""
    try:
        served = served_certificate(port, client)
    except OSError:
        return None
    return served.serial_number if "Pebble" in served.issuer.rfc4514_string() else None


def start_with_certificate(start_service, pebble, port, test_pki, args=None, env=None):
    service = start_service(acme_env(pebble) | (env or {}), port=port, wait=False, args=args)
    assert wait_until(lambda: pebbles_serial(port, test_pki.pair("quay")), timeout=40), service.log()
    return service


def status(service, path: str, test_pki) -> int | None:
    try:
        return requests.get(service.url + path, cert=test_pki.pair("quay"), verify=False, timeout=5).status_code
    except requests.RequestException:
        return None


def test_first_start_serves_at_once_then_pebbles_certificate_and_relays_quays_call(start_service, pebble_at, box,
                                                                                  test_pki, github, tmp_path):
    port = free_port()
    pebble = pebble_at(port)
    # Hold the order lease for a few seconds, as another replica ordering would: the wait is then certain.
    assert box.lock(state.ORDER_LEASE, "another replica", 3)
    started = time.monotonic()
    service = start_service(acme_env(pebble), port=port, wait=False)

    assert wait_until(lambda: status(service, "/healthz", test_pki) == 200, timeout=20), service.log()
    readyz = requests.get(service.url + "/readyz", cert=test_pki.pair("quay"), verify=False, timeout=5)
    assert readyz.status_code == 503
    assert "waiting for a certificate from ACME" in " ".join(readyz.json()["reasons"])
    assert healthcheck(service).returncode == 0  # the image's HEALTHCHECK, which has no certificate file to present
    assert wait_until(lambda: pebbles_serial(port, test_pki.pair("quay")), timeout=40), service.log()
    print(f"first start to pebble's certificate: {time.monotonic() - started:.1f} s (3 s of it the lease held)")

    root = tmp_path / "pebble-root.pem"
    root.write_text(pebble.root_pem())
    response = session_for(DOMAIN).post(f"https://127.0.0.1:{port}/incoming",
                                        data=json.dumps(sample_body("build_success", "acme/widget")),
                                        headers={"Content-Type": "application/json"},
                                        cert=test_pki.pair("quay"), verify=str(root), timeout=10)
    assert response.status_code == 202, response.text
    assert [r.path for r in github.wait_for(1)] == ["/repos/acme/widget/dispatches"]
    assert status(service, "/readyz", test_pki) == 200
    assert pebble.orders() == 1
    for step in ("ordering a certificate for relay.quay-dispatch.test", "answering the tls-alpn-01 challenge",
                 "certificate issued, serial", "tls-alpn-01 challenge for relay.quay-dispatch.test answered"):
        assert step in service.log()
    assert "BEGIN" not in service.log()  # no key, nor any certificate, in the log
    assert healthcheck(service).returncode == 0
    if service.env["DATABASE_URL"].startswith("sqlite:///"):  # it holds the keys: its owner's alone
        outbox = service.env["DATABASE_URL"][len("sqlite:///"):]
        assert {os.stat(outbox + suffix).st_mode & 0o777 for suffix in ("", "-wal", "-shm")} == {0o600}


def healthcheck(service) -> subprocess.CompletedProcess:
    env = service.env | {"PORT": str(service.port)}
    return subprocess.run([sys.executable, "-m", "quay_dispatch.healthcheck"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_the_challenge_door_opens_for_the_validator_alone(start_service, pebble_at, test_pki):
    port = free_port()
    service = start_with_certificate(start_service, pebble_at(port), port, test_pki)

    for name in ("other.example.test", DOMAIN):  # not configured; configured, but nothing pending
        with pytest.raises(ssl.SSLError, match="alert no application protocol"):
            served_certificate(port, alpn=["acme-tls/1"], name=name)
    assert "Pebble" in served_certificate(port, test_pki.pair("quay"), alpn=["h2", "http/1.1"]).issuer.rfc4514_string()
    assert service.log().count("acme-tls/1 connection for") == 2


def test_a_restart_serves_the_stored_certificate_from_its_first_connection_and_orders_nothing(
        start_service, pebble_at, box, test_pki):
    port = free_port()
    pebble = pebble_at(port)
    start_with_certificate(start_service, pebble, port, test_pki).stop()
    serial = state.load_certificate(box).leaf.serial_number

    start_service(acme_env(pebble), port=port, wait=False)
    first = None
    deadline = time.monotonic() + 20
    while first is None and time.monotonic() < deadline:
        try:
            first = served_certificate(port, test_pki.pair("quay"))
        except OSError:  # not listening yet
            time.sleep(0.02)

    assert first is not None and first.serial_number == serial
    time.sleep(2)  # the manager's first looks: due nothing
    assert pebble.orders() == 1


def test_renew_and_the_renewal_window_each_bring_one_order_served_by_every_worker_without_a_refusal(
        start_service, pebble_at, box, test_pki):
    port = free_port()
    pebble = pebble_at(port)
    service = start_with_certificate(start_service, pebble, port, test_pki, args=["--workers", "2"])
    serials = [pebbles_serial(port, test_pki.pair("quay"))]
    refused, stop = [], threading.Event()

    def connect_all_along():
        while not stop.is_set():
            try:
                served_certificate(port, test_pki.pair("quay"))
            except OSError as exc:
                refused.append(exc)

    client = threading.Thread(target=connect_all_along, daemon=True)
    client.start()
    renewed = run_flask(service.env, "certificate", "renew")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert renewed.stdout.startswith("renewed: serial ")
    serials.append(every_worker_serves_a_new_serial(port, test_pki, serials, service))

    stored = state.load_certificate(box)
    state.store_certificate(box, dataclasses.replace(stored, renew_at=time.time()))  # its window opened
    serials.append(every_worker_serves_a_new_serial(port, test_pki, serials, service))
    stop.set()
    client.join(10)

    assert refused == []
    assert pebble.orders() == 3
    shown = run_flask(service.env, "certificate").stdout
    assert f"serial:     {serials[-1]:x}" in shown and "last error: none" in shown, shown


def test_once_any_worker_serves_pebbles_certificate_every_worker_does(start_service, pebble_at, test_pki):
    """A client that trusts only the CA's root, as Quay does: from the first handshake that gets pebble's
    certificate on, no new connection gets the first start's self-signed one, whichever of the 2 workers takes it
    (a worker that learnt of it later once served the old one for up to 2 s)."""
    port = free_port()
    pebble = pebble_at(port)
    service = start_service(acme_env(pebble), port=port, wait=False, args=["--workers", "2"])
    assert wait_until(lambda: pebbles_serial(port, test_pki.pair("quay")), timeout=40, interval=0.01), service.log()
    after = [pebbles_serial(port, test_pki.pair("quay")) for _ in range(80)]  # about 2 s of new connections
    assert None not in after, after
    assert len(set(re.findall(r"ACME: serving the certificate serial .* \(worker (\d+)\)", service.log()))) == 2


def test_an_idle_service_with_acme_takes_no_write_lock(start_service, pebble_at, test_pki, backend, database_url):
    """Its workers learn of a challenge or a certificate when the store changes, not by a look that locks it twice
    a second: an operator's long command holding SQLite's write lock goes unnoticed."""
    if backend != "sqlite":
        pytest.skip("SQLite's write lock")
    port = free_port()
    service = start_with_certificate(start_service, pebble_at(port), port, test_pki, args=["--workers", "2"])
    time.sleep(3)  # the new certificate served everywhere; nothing else comes
    with hold_sqlite_lock(urlsplit(database_url).path[1:], seconds=15):
        time.sleep(6)
        assert pebbles_serial(port, test_pki.pair("quay"))
    assert "cannot look at the store" not in service.log() and "write lock" not in service.log(), service.log()


def every_worker_serves_a_new_serial(port, test_pki, known, service) -> int:
    deadline = time.monotonic() + 30
    while (serial := pebbles_serial(port, test_pki.pair("quay"))) in known + [None]:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
    # Each of the two workers says it serves it.
    assert wait_until(lambda: len(set(re.findall(rf"ACME: serving the certificate serial {serial:x} .* \(worker "
                                                 rf"(\d+)\)", service.log()))) == 2, timeout=10)
    return serial


def test_a_ca_that_refuses_gets_one_order_however_often_the_service_restarts(start_service, pebble_at, box,
                                                                             test_pki):
    port, nobody = free_ports(2)
    pebble = pebble_at(nobody)  # its validator goes to a port where nothing answers: every order fails
    env = acme_env(pebble)

    for _ in range(5):
        service = start_service(env, port=port, wait=False)
        assert wait_until(lambda s=service: status(s, "/healthz", test_pki) == 200, timeout=20), service.log()
        # The first start's order fails, and that is stored; the later starts make their looks at the store.
        assert wait_until(lambda s=service: "ACME: the order failed" in s.log() or pebble.orders(), timeout=30)
        assert wait_until(lambda: state.load_failures(box).count == 1, timeout=30), service.log()
        time.sleep(1)
        readyz = requests.get(service.url + "/readyz", cert=test_pki.pair("quay"), verify=False, timeout=5)
        service.stop()

    assert pebble.orders() == 1
    assert readyz.status_code == 503
    assert "waiting for a certificate from ACME: " in readyz.json()["reasons"][-1]
    shown = run_flask(service.env, "certificate").stdout
    assert "served:     a temporary self-signed certificate" in shown and "1 failed orders in a row" in shown, shown


def test_a_failed_renewal_keeps_the_current_certificate(start_service, pebble_at, box, test_pki):
    port = free_port()
    pebble = pebble_at(port)
    service = start_with_certificate(start_service, pebble, port, test_pki)
    serial = pebbles_serial(port, test_pki.pair("quay"))
    pebble.stop()  # the CA is down

    renewed = run_flask(service.env, "certificate", "renew")

    assert renewed.returncode == 1
    assert renewed.stdout.startswith("the order failed: "), renewed.stdout
    assert pebbles_serial(port, test_pki.pair("quay")) == serial
    failures = state.load_failures(box)
    assert failures.count == 1 and failures.next_try > time.time() + 60
    assert "ACME: the order failed (1 in a row), next try at " in service.log()


def test_a_ca_that_rejects_half_the_nonces_still_issues(start_service, pebble_at, test_pki):
    port = free_port()
    pebble = pebble_at(port, nonce_reject=50)

    service = start_with_certificate(start_service, pebble, port, test_pki, env={"DEBUG": "1"})

    assert pebble.orders() == 1
    assert service.log().count("the CA rejected a request's nonce") >= 2  # the library alone retries once


def test_the_operator_sees_the_certificate_in_metrics_and_check_config(start_service, pebble_at, test_pki):
    port = free_port()
    service = start_with_certificate(start_service, pebble_at(port), port, test_pki)
    expiry = served_certificate(port, test_pki.pair("quay")).not_valid_after_utc.timestamp()

    text = requests.get(service.url + "/metrics", cert=test_pki.pair("quay"), verify=False, timeout=5).text

    gauge = re.search(r'^quay_dispatch_tls_certificate_expiry_timestamp_seconds\{source="acme"\} (\S+)$', text, re.M)
    assert gauge and float(gauge[1]) == expiry
    assert 'quay_dispatch_acme_orders_total{result="issued"} 1.0' in text
    assert 'quay_dispatch_acme_orders_total{result="failed"} 0.0' in text
    checked = run_flask(service.env | {"DRY_RUN": "1"}, "check-config", "--online")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"certificate:    from ACME ({service.env['ACME_DIRECTORY']}) for {DOMAIN}" in checked.stdout
    assert "ok, directory answers" in checked.stdout
    assert re.search(r"ok, account https://127\.0\.0\.1:\d+/my-account/\w+ is valid", checked.stdout), checked.stdout


def test_two_replicas_on_postgresql_place_one_order_and_the_other_answers_the_validator(
        start_service, pebble_at, box, backend, database_url, test_pki):
    if backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL outbox")
    ordering_port, validated_port = free_ports(2)
    pebble = pebble_at(validated_port)  # pebble's validator goes to the replica that does not order
    assert box.lock(state.ORDER_LEASE, "test", 60)
    ordering = start_service(acme_env(pebble), port=ordering_port, wait=False)
    validated = start_service(acme_env(pebble), port=validated_port, wait=False)
    assert wait_until(lambda: status(ordering, "/healthz", test_pki) == 200, timeout=20), ordering.log()
    worker = re.search(r"Booting worker with pid: (\d+)", ordering.log())[1]
    # The lease handed to the first replica's worker in one statement (unlocked first, either replica could
    # take it before the test does): it orders, the second cannot.
    with psycopg.connect(database_url, autocommit=True) as conn:
        handed = conn.execute("UPDATE shared_leases SET holder = %s WHERE name = %s AND holder = 'test'",
                              (f"{socket.gethostname()}:{worker}", state.ORDER_LEASE)).rowcount
    assert handed == 1

    assert wait_until(lambda: pebbles_serial(ordering_port, test_pki.pair("quay")), timeout=40), ordering.log()
    assert wait_until(lambda: pebbles_serial(validated_port, test_pki.pair("quay")) ==
                      pebbles_serial(ordering_port, test_pki.pair("quay")), timeout=20), validated.log()
    assert pebble.orders() == 1
    assert "ACME: ordering a certificate" in ordering.log() and "ACME: ordering" not in validated.log()
    assert "tls-alpn-01 challenge for relay.quay-dispatch.test answered" in validated.log()


EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"  # pebble's example


def test_a_ca_that_requires_external_account_binding_gets_it(start_service, pebble_at, test_pki):
    port = free_port()
    pebble = pebble_at(port, eab={"kid-1": EAB_KEY})

    service = start_with_certificate(start_service, pebble, port, test_pki,
                                     env={"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY": EAB_KEY})

    assert pebble.orders() == 1
    assert EAB_KEY not in service.log()
    without = {k: v for k, v in service.env.items() if not k.startswith("ACME_EAB_")} | {"DRY_RUN": "1"}
    checked = run_flask(without, "check-config", "--online")
    assert "PROBLEM, the CA requires external account binding: set ACME_EAB_KID and ACME_EAB_HMAC_KEY" in \
        checked.stdout, checked.stdout
