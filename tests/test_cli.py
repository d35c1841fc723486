"""The command line: check-config, dev-certs and send-sample, run as an operator runs them."""

from __future__ import annotations

import pytest

from testkit.credentials import GITHUB_TOKEN
from testkit.service import base_env, free_port, run_flask


def test_check_config_summarises_what_the_service_will_do(test_pki, github, database_url):
    env = base_env(test_pki, github, database_url)

    result = run_flask(env, "check-config")

    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    assert "authentication: Quay's TLS client certificate, valid for quay.io" in result.stdout
    assert "(writable)" in result.stdout
    assert f"GitHub:         {github.url} (with GITHUB_TOKEN)" in result.stdout
    assert "acme/api -> acme-gh/api-server  (build_success; event_type QUAY_<EVENT>)" in result.stdout
    assert GITHUB_TOKEN not in result.stdout + result.stderr


def test_check_config_lists_every_problem_without_a_traceback(test_pki, github, database_url):
    env = base_env(test_pki, github, database_url) | {"ROUTES": "acme", "CLIENT_CERT_SOURCE": "nope"}

    result = run_flask(env, "check-config")

    assert result.returncode == 1
    assert "configuration error" in result.stderr
    assert "glob on 'namespace/name'" in result.stderr and "CLIENT_CERT_SOURCE='nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_online_asks_github_about_each_fixed_target(test_pki, github, database_url):
    github.reset()
    github.repos["acme-gh/api-server"] = (200, {"full_name": "acme-gh/api-server", "permissions": {"push": True}})
    github.repos["acme/readonly"] = (200, {"full_name": "acme/readonly", "permissions": {"push": False}})
    env = base_env(test_pki, github, database_url) | {
        "ROUTES": "acme/*; acme/api=acme-gh/api-server; acme/ro=acme/readonly; acme/web=acme/missing"}

    result = run_flask(env, "check-config", "--online")

    assert result.returncode == 1
    assert "{namespace}/{name}: not checked, it depends on the Quay repository's name" in result.stdout
    assert "acme-gh/api-server: ok, readable, writable" in result.stdout
    assert "acme/readonly: PROBLEM, readable, but the token cannot write to it" in result.stdout
    assert "acme/missing: PROBLEM, GitHub answered 404: Not Found" in result.stdout
    reads = [r for r in github.requests if r.method == "GET"]
    assert {r.path for r in reads} == {"/user", "/repos/acme-gh/api-server", "/repos/acme/readonly",
                                       "/repos/acme/missing"}
    assert all(r.headers["Authorization"] == f"Bearer {GITHUB_TOKEN}" for r in reads)


@pytest.mark.parametrize("change, words", [
    ({"GITHUB_TOKEN": "ghp_refused0123456789abcdefREFUSED"}, "credentials: PROBLEM, GitHub refused GITHUB_TOKEN: "
                                                             "Bad credentials"),
    ({"GITHUB_API_URL": f"http://127.0.0.1:{free_port()}"}, "credentials: PROBLEM, cannot reach GitHub: "),
    ({"scopes": "read:org"}, "credentials: PROBLEM, GITHUB_TOKEN accepted for relay-bot, but its scopes (read:org) "
                             "lack repo, which a dispatch needs"),
    ({}, "credentials: ok, GITHUB_TOKEN accepted for relay-bot, scopes: repo, workflow"),
    ({"scopes": None}, "credentials: ok, GITHUB_TOKEN accepted for relay-bot; GitHub lists a fine-grained token's "
                       "rights per repository"),
])
def test_check_config_online_proves_the_token_even_when_every_route_is_a_glob(test_pki, github, database_url,
                                                                              change, words):
    github.reset()
    change = dict(change)
    github.scopes = change.pop("scopes", github.scopes)
    env = base_env(test_pki, github, database_url) | {"ROUTES": "myorg/*"} | change

    result = run_flask(env, "check-config", "--online")

    assert words in result.stdout, result.stdout + result.stderr
    assert result.returncode == (0 if "credentials: ok" in words else 1)
    assert "Traceback" not in result.stderr


def test_check_config_shows_each_route_resolved_with_its_workflow(test_pki, github, database_url, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/api"\n\n'
                      '[[routes]]\nquay = "acme/web"\nworkflow = "deploy.yml"\nref = "main"\n'
                      'inputs = ["image", "sha"]\n\n'
                      '[[routes]]\nquay = "acme/*"\n')
    env = base_env(test_pki, github, database_url) | {"ROUTES": "", "ROUTES_FILE": str(routes)}

    result = run_flask(env, "check-config")

    assert result.returncode == 0, result.stderr
    assert "    acme/api -> acme/api  (build_success; event_type QUAY_<EVENT>)\n" in result.stdout
    assert ("    acme/web -> acme/web  (build_success; workflow deploy.yml, ref main, inputs image, sha)\n"
            in result.stdout)
    assert "    acme/* -> {namespace}/{name}  (build_success; event_type QUAY_<EVENT>)\n" in result.stdout


def test_outbox_commands_say_when_there_is_no_outbox_rather_than_make_one(tmp_path):
    missing = tmp_path / "typo" / "outbox.sqlite3"
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{missing}"}

    listed = run_flask(env, "deliveries")
    requeued = run_flask(env, "redeliver", "--all-failed")

    for result in (listed, requeued):
        assert result.returncode == 1
        assert f"no outbox at {missing}: is DATABASE_URL the service's?" in result.stderr
    assert not missing.parent.exists()


def test_dev_certs_then_send_sample_to_a_running_service(start_service, tmp_path, test_pki):
    env = {"PATH": "/usr/bin:/bin"}
    made = run_flask(env, "dev-certs", "--dir", str(tmp_path / "pki"))
    again = run_flask(env, "dev-certs", "--dir", str(tmp_path / "pki"))
    assert made.returncode == 0 and again.returncode == 1 and "use --force" in again.stderr
    pki_dir = tmp_path / "pki"
    service = start_service({"TLS_CERT_FILE": str(pki_dir / "server.pem"), "TLS_KEY_FILE": str(pki_dir / "server.key"),
                             "QUAY_CA_FILE": str(pki_dir / "ca.pem")}, wait=False)
    service.wait_ready((str(pki_dir / "quay.pem"), str(pki_dir / "quay.key")), str(pki_dir / "ca.pem"))

    as_quay = ["--cert", str(pki_dir / "quay.pem"), "--key", str(pki_dir / "quay.key"), "--ca", str(pki_dir / "ca.pem")]
    sent = run_flask(env, "send-sample", service.url + "/incoming/build_success", "--repo", "acme/widget", *as_quay)
    test = run_flask(env, "send-sample", service.url + "/incoming", "--repo", "acme/widget", "--test", *as_quay)

    assert sent.returncode == 0 and sent.stdout.startswith("202 ")
    assert test.returncode == 0 and '"status":"test"' in test.stdout
