"""`flask --app app quay …`: what Quay has beside what the routes want, and setting it up (connect). The CLI (cli.py)
hands in how to build the service's objects; everything else of Quay's side is loaded when a command runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import click

from ..base.printable import age, printable, utc

_services: Callable | None = None  # cli._services: builds the service's objects


def quay_group(services: Callable) -> click.Group:
    """The `quay` command group; `services()` builds the service's objects (cli._services)."""
    global _services
    _services = services
    return quay


@click.group("quay", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="The same, as one JSON object, for scripts.")
@click.pass_context
def quay(ctx, as_json: bool) -> None:
    """What Quay has beside what the routes want: for each routed repository and event, the relay's notification
    (or "missing"), its failures, whether Quay disabled it, and when the relay last heard from it. Exits 1 when
    one is missing or disabled, or Quay could not be asked."""
    if ctx.invoked_subcommand:
        return
    from .seen import last_heard
    from .survey import survey
    from .watch import load_state

    svc, api = _quay_side()
    found = survey(api, svc.settings.routes, svc.settings.public_url, last_heard(svc.outbox))
    state = load_state(svc.outbox)
    watched, outages = state.get("notifications") or {}, _may_be_missing(state)
    if as_json:
        click.echo(json.dumps(_as_data(found, svc.settings.quay_api_url, watched) | {"may_be_missing": outages},
                              indent=2))
    else:
        _show(found, svc.settings.quay_api_url, watched)
        for outage in outages:
            until = "now" if outage["to"] is None else utc(outage["to"])
            click.echo(f"may be missing: {outage['repository']} {outage['event']} from {utc(outage['from'])} to "
                       f"{until}: Quay dropped its events while the notification failed, and cannot list them")
    if found.problems or any(row.state in ("missing", "disabled") for row in found.rows if row.wanted):
        raise SystemExit(1)

@quay.command("connect")
@click.option("--dry-run", is_flag=True, help="Only say what would be created.")
@click.option("--test", "test", is_flag=True, help="Then have Quay send each one's test notification, and say "
                                                   "which arrived.")
@click.option("--wait", default=60, show_default=True, type=click.IntRange(1, 600),
              help="Seconds to wait for the tests to arrive.")
def connect(dry_run: bool, test: bool, wait: int) -> None:
    """Create the notifications the routes want and Quay lacks (webhook, this relay's URL for the event).
    Idempotent: a second run creates nothing. Never changes or deletes any notification."""
    from .connect import connect_missing, test_each

    svc, api = _quay_side()
    created, problems = connect_missing(api, svc.settings, svc.outbox, dry_run, click.echo)
    if test and not dry_run:
        problems |= test_each(api, svc.settings, svc.outbox, wait, click.echo)
    if problems:
        raise SystemExit(1)

@quay.command("repair")
def repair() -> None:
    """Reset the relay's notifications that Quay disabled, now, whatever the watch's backoff (after fixing what
    made Quay fail). Exits 1 when one stays disabled or Quay could not be asked."""
    from .watch import Watch, load_state

    svc, api = _quay_side()
    watch = Watch(svc.settings, svc.outbox, lambda: _not_writable(svc.outbox), svc.deliverer.host, api)
    state = watch.look(load_state(svc.outbox), force=True)
    for problem in state.get("problems", []):
        click.echo(f"PROBLEM: {printable(problem)}", err=True)
    entries = sorted((state.get("notifications") or {}).values(), key=lambda e: (e["repository"], e["event"]))
    for entry in entries:
        if entry["reset_at"] == state["at"]:
            click.echo(f"reset: {entry['repository']} {entry['event']}")
        elif entry["held"]:
            click.echo(f"not reset: {entry['repository']} {entry['event']}: {printable(entry['held'])}")
    if not any(entry["disabled"] or entry["reset_at"] == state["at"] for entry in entries):
        click.echo("nothing to repair: Quay has disabled none of the relay's notifications")
    if state.get("problems") or any(entry["disabled"] for entry in entries):
        raise SystemExit(1)


@quay.command("recover")
@click.option("--since", required=True, help="How far back: 90m, 2h, 1d (QUAY_RECOVER_MAX_AGE at most).")
@click.option("--dry-run", is_flag=True, help="Only say what would be dispatched.")
def recover(since: str, dry_run: bool) -> None:
    """Dispatch the build events and pushes of the routed repositories that Quay's lists show since then and the
    relay never took (older than QUAY_RECOVER_GRACE), marked recovered; what the relay took is a duplicate."""
    from ..config.reader import duration
    from .recover import RECOVERABLE, Recovery, count_recovered
    from .survey import survey
    from .watch import STATE, load_state

    svc, api = _quay_side()
    settings, now = svc.settings, time.time()
    seconds = duration(since)
    if not seconds or seconds > settings.quay_recover_max_age:
        raise click.BadParameter(f"{since!r}: a duration such as 2h, at most QUAY_RECOVER_MAX_AGE "
                                 f"({settings.quay_recover_max_age:.0f} s)", param_hint="--since")
    found = survey(api, settings.routes, settings.public_url, {})
    window = (now - seconds, now - settings.quay_recover_grace)
    windows = {(row.repository, row.event): window for row in found.rows if row.wanted and row.event in RECOVERABLE}
    items, problems = Recovery(settings, svc.outbox, api, svc.deliverer.host).run(windows, dry_run)
    for item in sorted(items, key=lambda item: item.at):
        click.echo(f"{item.outcome}: {item.repository} {item.event} {printable(item.what)} "
                   f"({age(now - item.at)} ago)")
    recovered = [item for item in items if item.outcome == "recovered"]
    click.echo(f"{len(recovered) if not dry_run else sum(i.outcome == 'would recover' for i in items)} "
               f"{'would be ' if dry_run else ''}recovered, of {len(items)} events in Quay's lists")
    if recovered:
        state = load_state(svc.outbox)
        count_recovered(state, recovered)
        svc.outbox.store(STATE, json.dumps(state))
    for problem in found.problems + problems:
        click.echo(f"PROBLEM: {printable(problem)}", err=True)
    if found.problems or problems:
        raise SystemExit(1)


def check_online(svc) -> list[tuple[bool | None, str]]:
    """For check-config --online: whether Quay's API takes the token, and what it may do with it; what needs doing
    on Quay's side as notes (None)."""
    from .api import QuayAPI
    from .survey import survey

    api = QuayAPI(svc.settings.quay_api_url, svc.settings.quay_api_token)
    found = survey(api, svc.settings.routes, svc.settings.public_url, {})
    if found.stopped is not None:
        return [(False, str(found.stopped))]
    results = [(True, f"{svc.settings.quay_api_url} takes the token: it reads the notifications of "
                      f"{len({row.repository for row in found.rows})} routed repositories (repo:admin)")]
    results += [(False, problem) for problem in found.problems]
    missing = [f"{row.repository} {row.event}" for row in found.rows if row.wanted and row.state == "missing"]
    disabled = [f"{row.repository} {row.event}" for row in found.rows if row.wanted and row.state == "disabled"]
    # Not the configuration's faults (before `quay connect`, nothing is there yet): said, not refused.
    if missing:
        results.append((None, f"no notification yet for {', '.join(missing[:10])}: `flask --app app quay connect`"))
    if disabled:
        results.append((None, f"disabled by Quay: {', '.join(disabled[:10])}: `flask --app app quay repair`"))
    return results


def _may_be_missing(state: dict) -> list[dict]:
    """The spans in which events Quay cannot list (vulnerability, mirror, expiry) may have been dropped: those
    the watch kept, and those still going on."""
    from .recover import RECOVERABLE

    spans = [{"repository": o["repository"], "event": o["event"], "uuid": o["uuid"], "from": o["trouble_since"],
              "to": o["healthy_since"]} for o in state.get("outages") or []]
    return spans + [{"repository": e["repository"], "event": e["event"], "uuid": e["uuid"], "from": e["trouble_since"],
                     "to": None} for e in (state.get("notifications") or {}).values()
                    if e.get("trouble_since") is not None and e["event"] not in RECOVERABLE]


def _not_writable(outbox) -> str | None:
    from ..outbox import StoreUnavailable

    try:
        outbox.check_writable()
    except StoreUnavailable as exc:
        return f"the outbox cannot commit a write: {exc}"
    return None


def _quay_side():
    """The service's objects and Quay's API client, or a clear refusal when Quay's side is off."""
    svc = _services()
    settings = svc.settings
    if not settings.quay_api_token:
        raise click.ClickException("Quay's side is off: set QUAY_API_TOKEN (docs/setup.md says how to make one)")
    from .api import QuayAPI

    return svc, QuayAPI(settings.quay_api_url, settings.quay_api_token)


def _as_data(found, api_url: str, watched: dict) -> dict:
    from .survey import without_credentials

    return {
        "quay_api_url": api_url,
        "notifications": [
            {"repository": row.repository, "event": row.event, "state": row.state, "wanted": row.wanted,
             "uuid": row.notification and row.notification.uuid, "title": row.notification and row.notification.title,
             "failures": row.notification and row.notification.failures,
             "disabled": bool(row.notification and row.notification.disabled), "last_received": row.last_received,
             "resets": _watched(row, watched).get("resets", 0), "repair_held": _watched(row, watched).get("held")}
            for row in found.rows],
        "not_ours": [{"repository": repository, "uuid": n.uuid, "title": n.title, "event": n.event,
                      "method": n.method, "url": without_credentials(n.url)} for repository, n in found.foreign],
        "not_watched": found.unwatched,
        "problems": found.problems,
    }


def _watched(row, watched: dict) -> dict:
    """What the watch keeps of the row's notification (watch.py): its resets, and why a repair is held."""
    return watched.get(row.notification.uuid, {}) if row.notification else {}


def _show(found, api_url: str, watched: dict) -> None:
    from .survey import without_credentials

    click.echo(f"Quay's API: {api_url}")
    now = time.time()
    header = ("REPOSITORY", "EVENT", "STATE", "FAILURES", "LAST RECEIVED", "NOTIFICATION")
    table = [header] + [
        (row.repository, row.event, row.state + ("" if row.wanted else " (no route wants it)"),
         "-" if row.notification is None else str(row.notification.failures),
         "never" if row.last_received is None else f"{age(now - row.last_received)} ago",
         "-" if row.notification is None else f"{row.notification.uuid} {printable(row.notification.title or '')}")
        for row in found.rows]
    _table(table)
    for row in found.rows:
        if held := _watched(row, watched).get("held"):
            click.echo(f"repair held: {row.repository} {row.event}: {printable(held)}")
    if found.foreign:
        click.echo("\nnot this relay's, never touched:")
        for repository, n in found.foreign:
            where = without_credentials(n.url) if n.method == "webhook" else f"method {n.method}"
            click.echo(f"  {repository}  {n.event}  {printable(where)}")
    if found.unwatched:
        click.echo("\nnot watched (namespace events, in Quay's organisation settings): " + ", ".join(found.unwatched))
    for problem in found.problems:
        click.echo(f"PROBLEM: {printable(problem)}", err=True)
    if any(row.state == "missing" for row in found.rows if row.wanted):
        click.echo("\n`flask --app app quay connect` creates the missing ones.")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


