"""Logs of long-lived processes (`torpor worker`, `torpor server`): text for people, or JSON
lines for log collectors (``--log-format json`` or ``TORPOR_LOG_FORMAT=json``)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from ._config import Settings
from ._errors import ConfigError

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "set_log_format"]

LOG_FORMATS = ("text", "json")

# A run id in a message ("run r-0na1fwjvhv78a: ..."), for records logged without an explicit
# ``extra={"run_id": ...}``: most of torpor's messages name their run that way.
_RUN_ID = re.compile(r"\br-[0-9a-hjkmnp-tv-z]{13}(?:-\d+)*\b")

# The attributes every LogRecord has; anything else came from ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_chosen: str | None = None


def set_log_format(value: str | None) -> None:
    """Choose the format for `configure_logging` (a command-line option wins over the
    environment)."""
    global _chosen
    _chosen = value


def _resolve(value: str | None, settings: Settings | None) -> str:
    value = value or _chosen
    if not value:
        return (settings or Settings.from_env()).log_format
    value = value.lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"log format {value!r} is unknown; use one of {', '.join(LOG_FORMATS)}")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, ``run_id`` (when
    known), ``exc`` (a traceback, if any) and whatever was passed in ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        run_id = getattr(record, "run_id", None)
        if run_id is None and (found := _RUN_ID.search(message)) is not None:
            run_id = found.group(0)
        if run_id is not None:
            line["run_id"] = run_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(
    fmt: str | None = None, *, level: int = logging.INFO, settings: Settings | None = None
) -> str:
    """Send the root logger's records to stderr in ``fmt`` (default: the chosen format, else
    ``settings.log_format``, from the environment without ``settings``); returns the format
    used."""
    fmt = _resolve(fmt, settings)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    # Replace, not add: a second call (tests, a command calling another) must not double lines.
    for old in list(root.handlers):
        if getattr(old, "_torpor", False):
            root.removeHandler(old)
    handler._torpor = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return fmt
