"""A Python client of the HTTP API (`torpor server`)."""

from __future__ import annotations

from ._client import Client

__all__ = ["Client"]
