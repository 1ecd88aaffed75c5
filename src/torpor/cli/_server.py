"""`torpor server`: the HTTP API on loopback (by default), with a bearer token."""

from __future__ import annotations

import ipaddress
import logging
import socket

import click

from .._config import Settings, redact_url
from .._errors import ConfigError
from .._logging import LOG_FORMATS, configure_logging
from ..store import open_store
from ._runs import import_all

__all__ = ["server"]

log = logging.getLogger("torpor.server")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn, so ``--port 0`` can print the port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8480, show_default=True)
@click.option("--import", "imports", multiple=True, help="Import this module or file first.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Logs on stderr as text or JSON lines (default: TORPOR_LOG_FORMAT, else text).",
)
def server(host: str, port: int, imports: tuple[str, ...], log_format: str | None) -> None:
    """Serve the HTTP API (runs, logs, events, snapshots, /metrics; schema at /openapi.json)
    and the dashboard (/dashboard/, log in with the token).

    Requests need 'Authorization: Bearer TOKEN': TORPOR_API_TOKEN, else the token in
    $TORPOR_HOME/api-token, made and printed on first start. Workflows to start by name
    must be importable here (--import); runs are executed by `torpor worker` processes.
    """
    import uvicorn

    from ..server import create_app, load_or_create_token

    configure_logging(log_format)
    import_all(imports)
    settings = Settings.from_env()
    token, origin = load_or_create_token(settings.home)
    store = open_store(settings=settings)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"torpor server: http://{shown}:{bound_port} ({redact_url(store.url)}); "
        f"dashboard: http://{shown}:{bound_port}/dashboard/",
        err=True,
    )
    if origin == "generated":
        click.echo(
            f"API token (saved in {settings.home / 'api-token'}, shown only now): {token}",
            err=True,
        )
    else:
        where = "TORPOR_API_TOKEN" if origin == "env" else str(settings.home / "api-token")
        click.echo(f"API token: from {where}", err=True)
    if not _is_loopback(host):
        log.warning(
            "listening on %s: other machines can reach the API; the token is the only "
            "protection and travels in clear text — put a TLS proxy in front",
            host,
        )
    config = uvicorn.Config(
        create_app(store, token),
        log_config=None,  # records go to torpor's handler (text or JSON lines)
        access_log=True,
        # Open log streams would otherwise hold a shutdown until their runs end.
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
