"""Settings: every TORPOR_* setting is read and checked in one place, `Settings.from_env`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import Cli, torpor_env
from torpor import ConfigError, Settings

SRC = Path(__file__).resolve().parents[1] / "src" / "torpor"

# Each variable with a value it refuses, and a part of what the message says it accepts.
BAD_VALUES = [
    ("TORPOR_MAX_PAYLOAD_BYTES", "lots", "whole number of bytes"),
    ("TORPOR_MAX_PAYLOAD_BYTES", "0", "1 or more"),
    ("TORPOR_MAX_PAYLOAD_BYTES", "1.5", "whole number of bytes"),
    ("TORPOR_SQLITE_SYNCHRONOUS", "OFF", "FULL, NORMAL, EXTRA"),
    ("TORPOR_LEASE_SECONDS", "abc", "number of seconds"),
    ("TORPOR_LEASE_SECONDS", "0", "more than 0"),
    ("TORPOR_LEASE_SECONDS", "-5", "more than 0"),
    ("TORPOR_LEASE_SECONDS", "nan", "more than 0"),
    ("TORPOR_CHECKPOINT_POLICY", "often", "'interval:SECONDS'"),
    ("TORPOR_CHECKPOINT_POLICY", "interval:soon", "'interval:SECONDS'"),
    ("TORPOR_CHECKPOINT_POLICY", "interval:0", "'interval:SECONDS'"),
    ("TORPOR_SUSPEND_AFTER", "abc", "number of seconds"),
    ("TORPOR_SUSPEND_AFTER", "-1", "0 or more"),
    ("TORPOR_SNAPSHOT_KEEP", "all", "whole number of snapshots"),
    ("TORPOR_SNAPSHOT_KEEP", "0", "1 or more"),
    ("TORPOR_S3_ADDRESSING_STYLE", "host", "auto, path, virtual"),
    ("TORPOR_LOG_FORMAT", "xml", "text, json"),
    ("TORPOR_SANDBOX_MEMORY_BYTES", "512M", "whole number of bytes"),
    ("TORPOR_SANDBOX_MEMORY_BYTES", "0", "1 or more"),
    ("TORPOR_SANDBOX_PIDS", "-3", "1 or more"),
    ("TORPOR_SANDBOX_CPUS", "half", "number of CPUs"),
    ("TORPOR_SANDBOX_CPUS", "0", "more than 0"),
    ("TORPOR_SANDBOX_CPUS", "nan", "more than 0"),
]

# Variables whose value is a path or a URL, taken as given (open_store, open_blob_store and
# find_criu check them when they are used).
FREE_FORM = ["TORPOR_HOME", "TORPOR_DATABASE_URL", "TORPOR_BLOB_URL", "TORPOR_CRIU"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("TORPOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


@pytest.mark.parametrize(("name", "value", "accepted"), BAD_VALUES)
def test_a_bad_value_names_the_variable_and_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, accepted: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        Settings.from_env()
    assert err.value.message.startswith(f"{name}={value!r}"), err.value.message
    assert accepted in err.value.message, err.value.message


def test_defaults(tmp_path: Path) -> None:
    home = tmp_path / "user" / ".torpor"
    assert Settings.from_env() == Settings(
        home=home,
        database_url=f"sqlite://{home / 'torpor.db'}",
        blob_url=f"file://{home / 'blobs'}",
        max_payload_bytes=16 * 1024 * 1024,
        sqlite_synchronous="FULL",
        lease_seconds=30.0,
        checkpoint_policy="wait",
        checkpoint_interval=0.0,
        suspend_after=3.0,
        criu=None,
        snapshot_keep=5,
        s3_addressing_style="auto",
        log_format="text",
    )
    # A Settings made in code gets the same defaults.
    assert Settings(home, "sqlite:///x", "file:///x").checkpoint_policy == "wait"


@pytest.mark.parametrize("name", [name for name, _, _ in BAD_VALUES] + FREE_FORM)
def test_an_empty_value_is_the_default(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    default = Settings.from_env()
    monkeypatch.setenv(name, "")
    assert Settings.from_env() == default


def test_good_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "TORPOR_HOME": str(tmp_path / "h"),
        "TORPOR_DATABASE_URL": "postgresql://torpor@db/torpor",
        "TORPOR_BLOB_URL": "s3://bucket/prefix",
        "TORPOR_MAX_PAYLOAD_BYTES": "1000",
        "TORPOR_SQLITE_SYNCHRONOUS": "normal",
        "TORPOR_LEASE_SECONDS": "2.5",
        "TORPOR_CHECKPOINT_POLICY": "Interval:1.5",
        "TORPOR_SUSPEND_AFTER": "0",
        "TORPOR_CRIU": "/opt/criu/bin/criu",
        "TORPOR_SNAPSHOT_KEEP": "2",
        "TORPOR_S3_ADDRESSING_STYLE": "PATH",
        "TORPOR_LOG_FORMAT": "JSON",
        "TORPOR_SANDBOX_MEMORY_BYTES": "536870912",
        "TORPOR_SANDBOX_PIDS": "256",
        "TORPOR_SANDBOX_CPUS": "0.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == Settings(
        home=tmp_path / "h",
        database_url="postgresql://torpor@db/torpor",
        blob_url="s3://bucket/prefix",
        max_payload_bytes=1000,
        sqlite_synchronous="NORMAL",
        lease_seconds=2.5,
        checkpoint_policy="interval",
        checkpoint_interval=1.5,
        suspend_after=0.0,
        criu="/opt/criu/bin/criu",
        snapshot_keep=2,
        s3_addressing_style="path",
        log_format="json",
        sandbox_memory_bytes=512 * 1024 * 1024,
        sandbox_pids=256,
        sandbox_cpus=0.5,
    )
    monkeypatch.setenv("TORPOR_CHECKPOINT_POLICY", "step")
    assert Settings.from_env().checkpoint_policy == "step"


def test_every_variable_settings_reads_is_tested() -> None:
    read = set(re.findall(r'"(TORPOR_[A-Z0-9_]+)"', (SRC / "_config.py").read_text()))
    assert read == {name for name, _, _ in BAD_VALUES} | set(FREE_FORM)


def test_settings_are_read_nowhere_else() -> None:
    """Only `_config` reads TORPOR_* from the environment; the API token and the snapshot
    key are read where they are used (the server and client; the snapshot store and
    `torpor doctor`), being secrets rather than settings."""
    pattern = re.compile(r'(?:os\.environ\.get\(|os\.environ\[|os\.getenv\()"(TORPOR_\w+)"')
    found = {
        (str(path.relative_to(SRC)), name)
        for path in SRC.rglob("*.py")
        if path.name != "_config.py"
        for name in pattern.findall(path.read_text())
    }
    secrets = {"TORPOR_API_TOKEN", "TORPOR_SNAPSHOT_KEY", "TORPOR_SNAPSHOT_KEY_FILE"}
    assert {name for _, name in found} <= secrets, sorted(found)


def test_the_cli_reports_a_bad_setting_without_a_traceback(tmp_path: Path) -> None:
    env = torpor_env(f"sqlite://{tmp_path / 'db'}", tmp_path / "home", TORPOR_SUSPEND_AFTER="abc")
    result = Cli(env)("ps")
    assert result.code == 1, result
    assert "Traceback" not in result.err, result.err
    assert result.err.strip() == (
        "Error: TORPOR_SUSPEND_AFTER='abc' is not a number of seconds; "
        "use a number of seconds, 0 or more (default 3)"
    )
