"""Settings read from the environment (DESIGN.md, "Configuration").

Every ``TORPOR_*`` setting is read and checked here, once: a bad value is a `ConfigError`
naming the variable, what is wrong with it and what it accepts, before anything starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "DEFAULT_SNAPSHOT_KEEP", "Settings", "redact_url"]

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
DEFAULT_SNAPSHOT_KEEP = 5


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
    # The CRIU binary the user named (None: search the usual places, see `find_criu`).
    criu: str | None = None
    # Snapshots `SnapshotStore.prune` keeps per finished run.
    snapshot_keep: int = DEFAULT_SNAPSHOT_KEEP
    # How S3 requests name the bucket: `path` for servers without virtual-host style.
    s3_addressing_style: str = "auto"
    # Logs of `torpor worker` and `torpor server`: `text` for people, `json` lines.
    log_format: str = "text"
    # Snapshot road: the cgroup limits of each run's sandbox (None: no limit of torpor's own;
    # a container's or the worker's cgroup still applies above it).
    sandbox_memory_bytes: int | None = None
    sandbox_pids: int | None = None
    sandbox_cpus: float | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """The settings the ``TORPOR_*`` environment variables give.

        Raises:
            ConfigError: a variable holds a value it does not accept.
        """
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
            max_payload_bytes=_int_env(
                "TORPOR_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES, "bytes"
            ),
            sqlite_synchronous=_choice_env(
                "TORPOR_SQLITE_SYNCHRONOUS", "FULL", ("FULL", "NORMAL", "EXTRA")
            ),
            lease_seconds=_float_env("TORPOR_LEASE_SECONDS", 30.0),
            checkpoint_policy=policy,
            checkpoint_interval=interval,
            suspend_after=_float_env("TORPOR_SUSPEND_AFTER", 3.0, allow_zero=True),
            criu=os.environ.get("TORPOR_CRIU") or None,
            snapshot_keep=_int_env("TORPOR_SNAPSHOT_KEEP", DEFAULT_SNAPSHOT_KEEP, "snapshots"),
            s3_addressing_style=_choice_env(
                "TORPOR_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")
            ),
            log_format=_choice_env("TORPOR_LOG_FORMAT", "text", ("text", "json")),
            sandbox_memory_bytes=_optional_int("TORPOR_SANDBOX_MEMORY_BYTES", "bytes"),
            sandbox_pids=_optional_int("TORPOR_SANDBOX_PIDS", "tasks"),
            sandbox_cpus=_optional_cpus("TORPOR_SANDBOX_CPUS"),
        )


def _optional_int(name: str, unit: str) -> int | None:
    raw = os.environ.get(name)
    return _whole_number(name, raw, unit, "default: no limit") if raw else None


def _optional_cpus(name: str) -> float | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    accepted = "use a number of CPUs more than 0, e.g. 0.5 or 2 (default: no limit)"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of CPUs; {accepted}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is out of range; {accepted}")
    return value


def _int_env(name: str, default: int, unit: str) -> int:
    raw = os.environ.get(name)
    return _whole_number(name, raw, unit, f"default {default}") if raw else default


def _whole_number(name: str, raw: str, unit: str, default: str) -> int:
    accepted = f"use a whole number of {unit}, 1 or more ({default})"
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; {accepted}") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} is too small; {accepted}")
    return value


def _float_env(name: str, default: float, *, allow_zero: bool = False) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    least = "0 or more" if allow_zero else "more than 0"
    accepted = f"use a number of seconds, {least} (default {default:g})"
    return _seconds(name, raw, raw, accepted, allow_zero=allow_zero)


def _seconds(name: str, raw: str, number: str, accepted: str, *, allow_zero: bool = False) -> float:
    """``number`` (a part of ``raw``, the variable's value) as seconds."""
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds; {accepted}") from None
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"{name}={raw!r} is out of range; {accepted}")
    return value


def _checkpoint_policy() -> tuple[str, float]:
    name = "TORPOR_CHECKPOINT_POLICY"
    raw = (os.environ.get(name) or "wait").strip().lower()
    accepted = "use 'wait' (default), 'step' or 'interval:SECONDS' with SECONDS more than 0"
    if raw in ("wait", "step"):
        return raw, 0.0
    if raw.startswith("interval:"):
        return "interval", _seconds(name, raw, raw.split(":", 1)[1], accepted)
    raise ConfigError(f"{name}={raw!r} is not a checkpoint policy; {accepted}")


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``, whatever the case it is written in."""
    raw = os.environ.get(name)
    if not raw:
        return default
    by_folded = {choice.casefold(): choice for choice in choices}
    value = by_folded.get(raw.strip().casefold())
    if value is None:
        raise ConfigError(
            f"{name}={raw!r} is not one of its values; use {', '.join(choices)} (default {default})"
        )
    return value


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and `torpor doctor`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
