"""The HTTP API (`torpor server`): runs, logs (with server-sent events), events, snapshots,
health and Prometheus metrics over one store."""

from __future__ import annotations

from ._app import create_app
from ._auth import load_or_create_token

__all__ = ["create_app", "load_or_create_token"]
