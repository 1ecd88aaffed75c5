"""The `torpor` command: a thin layer over the library.

Library errors become one clear line on stderr and a non-zero exit code (1), usage errors
exit 2 (click's convention); a traceback is a bug.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import click
import psycopg

from .. import __version__
from .._config import Settings
from .._errors import TorporError
from .._logging import LOG_FORMATS, set_log_format
from .._model import LogEntry, RunStatus
from ..log import describe_entry
from ..store import Store, open_store
from . import _runs, _snapshots
from ._doctor import doctor
from ._runs import server_client
from ._server import server

__all__ = ["main"]

_ACTIVE = [s for s in RunStatus if not s.terminal]


class _Group(click.Group):
    """Turns library and database errors into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TorporError as exc:
            raise click.ClickException(exc.message) from None
        except (sqlite3.Error, psycopg.Error) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"store error: {first}") from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None


def _log_format_option() -> click.Option:
    return click.Option(
        ["--log-format"],
        type=click.Choice(LOG_FORMATS),
        expose_value=False,
        is_eager=True,
        callback=lambda _ctx, _param, value: set_log_format(value) if value else None,
        help="Logs on stderr as text or JSON lines (default: TORPOR_LOG_FORMAT, else text).",
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="torpor")
@click.option(
    "--url",
    envvar="TORPOR_URL",
    default=None,
    help="Go through `torpor server` at this URL (ps, log, send, cancel, fork) instead of "
    "the store.",
)
@click.option("--token", envvar="TORPOR_API_TOKEN", default=None, help="The server's API token.")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None) -> None:
    """torpor: durable execution for long-running LLM agents.

    State lives in TORPOR_DATABASE_URL (default: an SQLite file under TORPOR_HOME, itself
    ~/.torpor by default), or behind `torpor server` (--url).
    """
    ctx.obj = {"url": url, "token": token}


main.params.append(_log_format_option())


def _open(*, create: bool = False) -> Store:
    """The store; one that does not exist yet is refused unless ``create`` (a command that
    only reads or acts on existing runs must not make an empty store of a mistyped URL)."""
    return open_store(settings=Settings.from_env(), create=create)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _age(ts: float) -> str:
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _parse_json_arg(text: str, what: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            f"{text[:80]!r}; quote strings, e.g. '\"yes\"' or '{{\"ok\": true}}'"
        ) from None


# -- runs and their logs ------------------------------------------------------------------


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include completed, failed, cancelled.")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice([s.value for s in RunStatus])
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Newest N runs only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list on stdout.")
def ps(show_all: bool, statuses: Sequence[str], limit: int | None, as_json: bool) -> None:
    """List runs (by default those not yet ended), newest first."""
    wanted: list[RunStatus] | None
    if statuses:
        wanted = [RunStatus(s) for s in statuses]
    else:
        wanted = None if show_all else _ACTIVE
    if (client := server_client()) is not None:
        with client:
            runs = client.list_runs(statuses=wanted, limit=limit)
    else:
        with _open() as store:
            runs = store.list_runs(statuses=wanted, limit=limit)
    if as_json:
        _emit_json([run.to_json() for run in runs])
        return
    if not runs:
        click.echo("no runs" if show_all else "no active runs (torpor ps --all lists ended ones)")
        return
    header = f"{'ID':<16} {'WORKFLOW':<32} {'ROAD':<8} {'STATUS':<10} {'ATT':>3} {'LOG':>6} AGE"
    click.echo(header)
    for run in runs:
        click.echo(
            f"{run.id:<16} {run.workflow[:32]:<32} {run.road.value:<8} {run.status.value:<10} "
            f"{run.attempt:>3} {run.last_seq:>6} {_age(run.created_at)}"
        )


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Keep printing entries as they land.")
@click.option("--after", type=click.IntRange(min=0), default=0, help="Only entries after SEQ.")
@click.option("--json", "as_json", is_flag=True, help="JSON list (JSON lines with --follow).")
def log(run_id: str, follow: bool, after: int, as_json: bool) -> None:
    """Print a run's context log."""
    if (client := server_client()) is not None:
        with client:
            if follow:
                _print_log(client.follow(run_id, after=after), as_json, follow)
            else:
                _print_log(client.log(run_id, after=after), as_json, follow)
        return
    with _open() as store:
        if follow:
            _print_log(store.follow(run_id, after=after, stop_when_final=True), as_json, follow)
        else:
            _print_log(store.read(run_id, after=after), as_json, follow)


def _print_log(entries: Iterable[LogEntry], as_json: bool, follow: bool) -> None:
    if not follow:
        entries = list(entries)  # a refused read prints nothing, not a partial list
        if as_json:
            _emit_json([e.to_json() for e in entries])
            return
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry.to_json(), ensure_ascii=False))
        else:
            click.echo(describe_entry(entry))
        if follow:
            sys.stdout.flush()


@main.command()
@click.argument("run_id", metavar="RUN")
@click.argument("event")
@click.argument("payload", metavar="[JSON]", required=False, default="null")
def send(run_id: str, event: str, payload: str) -> None:
    """Deliver EVENT with a JSON payload (or - to read it from stdin) to a run."""
    value = _parse_json_arg(payload, f"the payload of event {event!r}")
    if (client := server_client()) is not None:
        with client:
            sent = client.send(run_id, event, value)
    else:
        with _open() as store:
            sent = store.send_event(run_id, event, value)
    click.echo(f"sent {event!r} to {run_id} (event {sent.id})")


@main.command()
@click.argument("run_id", metavar="RUN")
def cancel(run_id: str) -> None:
    """Cancel a run (at once, or at its next step boundary if a worker is executing it)."""
    if (client := server_client()) is not None:
        with client:
            run = client.cancel(run_id)
    else:
        with _open() as store:
            run = store.cancel_run(run_id)
    if run.status is RunStatus.CANCELLED:
        click.echo(f"{run_id} cancelled")
    else:
        click.echo(f"{run_id}: cancel requested; it stops at its next step boundary")


@main.command("doctor")
@click.option("--cleanup", is_flag=True, help="Remove sandboxes left behind by crashed processes.")
def doctor_command(cleanup: bool) -> None:
    """Check the store, the blob store and the machine; say how to fix what is missing."""
    if not doctor(Settings.from_env(), click.echo, cleanup=cleanup):
        raise SystemExit(1)


# -- the other commands -------------------------------------------------------------------


main.add_command(server)


for _command in (
    _runs.run,
    _runs.worker,
    _runs.fork,
    _runs.resume,
    _snapshots.snapshot,
    _snapshots.snapshots,
):
    main.add_command(_command)
_runs.worker.params.append(_log_format_option())  # `torpor worker --log-format json`


@main.command()
def demo() -> None:
    """The offline demonstration: a durable coding agent crashed with SIGKILL and resumed."""
    from ._demo import run_demo

    run_demo(lambda: _open(create=True), click.echo)
