"""`torpor doctor`: check what torpor needs and say how to fix what is missing."""

from __future__ import annotations

import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .._config import Settings, redact_url
from .._errors import TorporError
from ..store import SCHEMA_VERSION, open_store

__all__ = ["doctor"]


class _Report:
    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.ok = True

    def good(self, what: str, detail: str) -> None:
        self.echo(f"ok    {what:<12} {detail}")

    def bad(self, what: str, detail: str, fix: str) -> None:
        self.ok = False
        self.echo(f"FAIL  {what:<12} {detail}\n      {'':<12} fix: {fix}")

    def note(self, what: str, detail: str) -> None:
        self.echo(f"--    {what:<12} {detail}")


def doctor(settings: Settings, echo: Callable[[str], None]) -> bool:
    """Print one line per check; True if nothing failed."""
    report = _Report(echo)
    report.good("python", f"{platform.python_implementation()} {sys.version.split()[0]}")
    report.good("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})")
    _check_home(report, settings.home)
    _check_store(report, settings)
    _check_blobs(report, settings.blob_url)
    report.note("snapshot", "CRIU and sandbox checks are not in this version yet")
    return report.ok


def _writable(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _check_home(report: _Report, home: Path) -> None:
    problem = _writable(home)
    if problem:
        report.bad("home", f"{home}: {problem}", "set TORPOR_HOME to a writable directory")
    else:
        report.good("home", str(home))


def _check_store(report: _Report, settings: Settings) -> None:
    shown = redact_url(settings.database_url)
    try:
        with open_store(settings=settings) as store:
            version = store.schema_version()
            runs = len(store.list_runs())
    except TorporError as exc:
        report.bad("store", exc.message, "see the message; TORPOR_DATABASE_URL picks the store")
        return
    detail = f"{shown} (schema v{version} of v{SCHEMA_VERSION}, {runs} runs)"
    if settings.database_url.startswith("sqlite:"):
        detail += f", synchronous={settings.sqlite_synchronous}"
    report.good("store", detail)


def _check_blobs(report: _Report, blob_url: str) -> None:
    parts = urlsplit(blob_url)
    if parts.scheme == "file":
        path = Path(parts.path)
        problem = _writable(path)
        if problem:
            report.bad("blobs", f"{path}: {problem}", "set TORPOR_BLOB_URL=file:///writable/dir")
        else:
            report.good("blobs", blob_url)
    elif parts.scheme == "s3":
        report.note("blobs", f"{blob_url}: S3 blob stores are not checked in this version yet")
    else:
        report.bad(
            "blobs",
            f"unsupported TORPOR_BLOB_URL {blob_url!r}",
            "use file:///path or s3://bucket/prefix",
        )
