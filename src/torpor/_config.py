"""Settings read from the environment (DESIGN.md, "Configuration")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "Settings", "redact_url"]

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Where torpor keeps its state, and its limits."""

    home: Path
    database_url: str
    blob_url: str
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    sqlite_synchronous: str = "FULL"
    lease_seconds: float = 30.0
    # Snapshot road: when to checkpoint (`wait`: at long waits and on demand; `step`: also
    # after every step; `interval`: also every `checkpoint_interval` seconds), and how long
    # a wait must be to suspend the sandbox rather than wait in it.
    checkpoint_policy: str = "wait"
    checkpoint_interval: float = 0.0
    suspend_after: float = 3.0

    @classmethod
    def from_env(cls) -> Settings:
        home = (
            Path(os.environ.get("TORPOR_HOME") or Path.home() / ".torpor").expanduser().absolute()
        )
        database_url = os.environ.get("TORPOR_DATABASE_URL") or f"sqlite://{home / 'torpor.db'}"
        blob_url = os.environ.get("TORPOR_BLOB_URL") or f"file://{home / 'blobs'}"
        policy, interval = _checkpoint_policy()
        return cls(
            home=home,
            database_url=database_url,
            blob_url=blob_url,
            max_payload_bytes=_int_env("TORPOR_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES),
            sqlite_synchronous=_choice_env(
                "TORPOR_SQLITE_SYNCHRONOUS", "FULL", ("FULL", "NORMAL", "EXTRA")
            ),
            lease_seconds=_float_env("TORPOR_LEASE_SECONDS", 30.0),
            checkpoint_policy=policy,
            checkpoint_interval=interval,
            suspend_after=_float_env("TORPOR_SUSPEND_AFTER", 3.0, allow_zero=True),
        )


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number of bytes") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _float_env(name: str, default: float, *, allow_zero: bool = False) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    return _seconds(name, raw, allow_zero=allow_zero)


def _seconds(name: str, raw: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"{name}={raw!r} must be {'zero or ' if allow_zero else ''}positive")
    return value


def _checkpoint_policy() -> tuple[str, float]:
    name = "TORPOR_CHECKPOINT_POLICY"
    raw = (os.environ.get(name) or "wait").strip().lower()
    if raw in ("wait", "step"):
        return raw, 0.0
    if raw.startswith("interval:"):
        return "interval", _seconds(name, raw.split(":", 1)[1])
    raise ConfigError(f"{name}={raw!r}: use 'wait', 'step' or 'interval:SECONDS'")


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name)
    if not raw:
        return default
    value = raw.upper()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and `torpor doctor`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
