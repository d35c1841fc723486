"""Command line: `flask --app app <command>`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import requests
from flask import Flask

from .base.printable import age, printable
from .config import ConfigError, certificates_in, environment_store_settings
from .domain.dispatch_request import STATUSES
from .domain.quay import ALL_EVENTS
from .outbox import Outbox, SQLiteOutbox, StoreUnavailable, open_outbox
from .runtime.preflight import start_problems
from .runtime.services import services_of
from .tools.pki import make_dev_pki
from .tools.sample import sample_body, send_like_quay


@click.command("dev-certs")
@click.option("--dir", "directory", default="var/dev-pki", show_default=True, type=click.Path(path_type=Path),
              help="Where to write the PKI.")
@click.option("--force", is_flag=True, help="Replace an existing PKI.")
def dev_certs(directory: Path, force: bool) -> None:
    """Make a local test PKI: a root CA, a server certificate for localhost, a Quay-like client pair."""
    if (directory / "ca.pem").exists() and not force:
        raise click.ClickException(f"{directory} already holds a PKI; use --force to replace it")
    paths = make_dev_pki(directory)
    click.echo(f"wrote a local test PKI to {directory}/:")
    click.echo(f"  ca.pem                   root CA: QUAY_CA_FILE={paths['ca']}")
    click.echo(f"  server.pem, server.key   TLS_CERT_FILE={paths['server_cert']} TLS_KEY_FILE={paths['server_key']}")
    click.echo(f"  quay.pem, quay.key       a client pair that passes for quay.io when QUAY_CA_FILE={paths['ca']}")


@click.command("deliveries")
@click.option("--status", type=click.Choice(STATUSES), help="Only deliveries with this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
def deliveries(status: str | None, limit: int, as_json: bool) -> None:
    """List the newest deliveries and what became of them (needs only DATABASE_URL)."""
    outbox = _outbox()
    rows = outbox.list(status=status, limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(asdict(row)))
        return
    if not rows:
        click.echo("no deliveries" + (f" with status {status}" if status else ""))
        return
    now = time.time()
    header = ("ID", "AGE", "QUAY REPOSITORY", "EVENT", "TARGET", "STATUS", "ATTEMPTS", "LAST ERROR OR RUN")
    table = [header] + [
        (str(r.id), age(now - r.created_at), r.quay_repository, r.event + (" (recovered)" if r.recovered else ""),
         r.target, r.status, str(r.attempts),
         printable(r.last_error or "")[:80] or r.run_url or "")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@click.command("check-config")
@click.option("--online", is_flag=True, help="Also ask GitHub whether the token can reach each routed repository, "
                                            "and ACME's CA and Quay's API what they say.")
def check_config(online: bool) -> None:
    """Validate the configuration and say what the service will do with it."""
    svc = _services()
    settings = svc.settings
    if problems := start_problems(settings):  # the start's own checks, gunicorn's settings and the store's included
        raise click.ClickException("the service would refuse to start:\n" + "\n".join(f"  - {p}" for p in problems))
    click.echo("configuration is valid")
    click.echo(f"  authentication: {_describe_auth(settings)}")
    try:
        svc.outbox.migrate()
        svc.outbox.check_writable()
        store = "writable"
    except StoreUnavailable as exc:
        store = f"NOT WRITABLE: {exc}"
    click.echo(f"  outbox:         {svc.outbox.description} ({store})")
    if settings.dry_run:
        sending = "DRY RUN, nothing is sent"
    elif settings.github_app_id:
        sending = f"as GitHub App {settings.github_app_id}"
    else:
        sending = "with GITHUB_TOKEN"
    click.echo(f"  GitHub:         {settings.github_api_url} ({sending})")
    if settings.acme_domains:
        click.echo(f"  certificate:    from ACME ({settings.acme_directory}) for {', '.join(settings.acme_domains)}")
    click.echo("  routes:")
    for route in settings.routes:
        click.echo(f"    {_describe_route(route)}")
    problems = store != "writable"
    if online:
        problems |= _check_online(svc)
        problems |= _check_more_online(svc)
    if problems:
        raise SystemExit(1)


def _describe_auth(settings) -> str:
    token = "; INCOMING_TOKEN required" if settings.incoming_token else ""
    roots = settings.quay_ca_file or "the Mozilla bundle"
    if settings.client_cert_source == "tls":
        return f"Quay's TLS client certificate, valid for {', '.join(settings.quay_hostnames)} (roots: {roots}){token}"
    if settings.client_cert_source == "header":
        proxies = ", ".join(map(str, settings.forwarded_allow_ips))
        return (f"Quay's certificate forwarded in {settings.client_cert_header} by {proxies}, valid for "
                f"{', '.join(settings.quay_hostnames)} (roots: {roots}){token}")
    return "INCOMING_TOKEN only (no client certificate)"


def _describe_route(route) -> str:
    """`acme/api -> acme-gh/api  (build_success; workflow deploy.yml, ref {branch}, inputs image)`."""
    filters = "".join(f", {name} {', '.join(values)}" for name, values in
                      (("branches", route.branches), ("tags", route.tags)) if values)
    if route.workflow:
        inputs = f", inputs {', '.join(route.inputs)}" if route.inputs else ""
        dispatch = f"workflow {route.workflow}, ref {route.ref}{inputs}"
    else:
        dispatch = f"event_type {route.event_type or 'QUAY_<EVENT>'}"
    return f"{route.quay} -> {route.fixed_target() or route.github}  ({', '.join(route.events)}; {dispatch}{filters})"


def _check_online(svc) -> bool:
    """Prove that GitHub accepts the credentials, then ask about each routed repository that does not
    depend on the Quay repository's name."""
    if svc.settings.dry_run:
        click.echo("  online: skipped in dry-run mode (no token)")
        return False
    click.echo("  online:")
    accepted, detail = svc.github.check_credentials()
    click.echo(f"    credentials: {'ok' if accepted else 'PROBLEM'}, {detail}")
    if not accepted:
        return True
    problems = False
    for route in svc.settings.routes:
        target = route.fixed_target()
        if target is None:
            click.echo(f"    {route.github}: not checked, it depends on the Quay repository's name")
            continue
        ok, detail = svc.github.check_target(target, "actions" if route.workflow else "contents")
        problems |= not ok
        click.echo(f"    {target}: {'ok' if ok else 'PROBLEM'}, {detail}")
    return problems


@click.group("certificate", invoke_without_command=True)
@click.pass_context
def certificate(ctx) -> None:
    """The TLS certificate served: names, issuer, expiry, next renewal, last error (ACME's, or the file's)."""
    if ctx.invoked_subcommand:
        return
    svc = _services()
    settings = svc.settings
    from .acme.commands import certificate_lines, describe

    if settings.acme_domains:
        lines = describe(svc.outbox, settings.acme_domains, settings.acme_directory)
    elif settings.tls_cert_file:
        try:
            leaf = certificates_in(settings.tls_cert_setting, settings.tls_cert_file)[0]
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        lines = [f"  source:     {settings.tls_cert_setting}={settings.tls_cert_file}", *certificate_lines(leaf)]
    else:
        raise click.ClickException("no certificate: neither ACME_DOMAINS nor TLS_CERT_FILE is set (TLS ends at a "
                                   "proxy or a router)")
    click.echo("certificate")
    for line in lines:
        click.echo(line)


@certificate.command("renew")
def certificate_renew() -> None:
    """Order a new certificate from ACME now (a compromised key, a CA's incident) and wait for it, a minute at most."""
    svc = _services()
    if not svc.settings.acme_domains:
        raise click.ClickException("renew needs ACME_DOMAINS: a certificate from TLS_CERT_FILE is renewed by "
                                   "whoever writes the file (certbot renew), and the service reloads it by itself")
    from .acme.commands import renew

    renewed, message = renew(svc.outbox)
    click.echo(message)
    if not renewed:
        raise SystemExit(1)


def _check_more_online(svc) -> bool:
    """ACME's CA and account, Quay's API: whether something is wrong."""
    found = []
    if svc.settings.acme_domains:
        from .acme.commands import check_online

        found.append(("ACME", check_online(svc.outbox, svc.certificates.ca)))
    if svc.settings.quay_api_token:
        from .quay_side.commands import check_online as check_quay

        found.append(("Quay's API", check_quay(svc)))
    for title, results in found:
        click.echo(f"    {title}:")
        for fine, what in results:
            click.echo(f"      {'note' if fine is None else 'ok' if fine else 'PROBLEM'}, {printable(what)}")
    return any(fine is False for _, results in found for fine, _ in results)


@click.command("redeliver")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Every failed and expired delivery.")
def redeliver(ids: tuple[int, ...], all_failed: bool) -> None:
    """Put deliveries back in the queue; a running service sends them within a second (needs only DATABASE_URL)."""
    if bool(ids) == all_failed:
        raise click.UsageError("give delivery IDs, or --all-failed")
    outbox = _outbox()
    queued, refused = outbox.redeliver(None if all_failed else list(ids))
    if queued:
        click.echo(f"queued again: {', '.join(map(str, queued))}")
    elif all_failed:
        click.echo("no failed or expired delivery")
    for delivery_id, reason in sorted(refused.items()):
        click.echo(f"not queued: {delivery_id}: {reason}", err=True)
    if refused:
        raise SystemExit(1)


@click.command("send-sample")
@click.argument("url")
@click.option("--event", type=click.Choice(ALL_EVENTS), default="build_success", show_default=True)
@click.option("--repo", "repository", default="myorg/myrepo", show_default=True, help="Quay repository namespace/name.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate chain (PEM), as Quay's.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Its private key.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA that signed the service's certificate.")
@click.option("--branch", default="main", show_default=True)
@click.option("--test", "test_marker", is_flag=True, help="Send Quay's Test Notification (build_id fake-build-id).")
def send_sample(url, event, repository, cert, key, ca, branch, test_marker) -> None:
    """Send a Quay-shaped notification to a running instance, exactly as Quay does."""
    body = sample_body(event, repository, branch=branch, test=test_marker)
    try:
        response = send_like_quay(url, body, (cert, key) if cert else None, verify=ca or True)
    except requests.RequestException as exc:
        raise click.ClickException(f"could not send: {exc}") from None
    click.echo(f"{response.status_code} {response.text.strip()}")
    if not response.ok:
        raise SystemExit(1)


def _services():
    try:
        return services_of()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _outbox() -> Outbox:
    """The outbox DATABASE_URL names, schema up to date, without the rest of the configuration."""
    try:
        outbox = open_outbox(*environment_store_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if isinstance(outbox, SQLiteOutbox) and not outbox.path.exists():  # a typo would make a new, empty one
        raise click.ClickException(f"no outbox at {outbox.path}: is DATABASE_URL the service's?")
    try:
        outbox.migrate()
    except StoreUnavailable as exc:
        raise click.ClickException(f"the outbox ({outbox.description}) cannot be opened: {exc}") from None
    return outbox


class _OnDemand(click.Command):
    """A command loaded when it runs: `flask --help` lists it, and the service never imports it."""

    def __init__(self, name: str, short_help: str, load):
        super().__init__(name, short_help=short_help)
        self._load = load

    def make_context(self, info_name, args, parent=None, **extra):
        return self._load().make_context(info_name, args, parent, **extra)


def _quay_commands() -> click.Command:
    from .quay_side.commands import quay_group

    return quay_group(_services)


def init_app(app: Flask) -> None:
    app.cli.add_command(dev_certs)
    app.cli.add_command(deliveries)
    app.cli.add_command(check_config)
    app.cli.add_command(redeliver)
    app.cli.add_command(send_sample)
    app.cli.add_command(certificate)
    app.cli.add_command(_OnDemand("quay", "Quay's side: what Quay has, connect, repair, recover.", _quay_commands))
