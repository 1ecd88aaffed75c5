"""Fixtures: every store test runs on SQLite and on a real PostgreSQL started for the session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from torpor.store import Store, open_store
from torpor.testing import TemporaryPostgres

pytest_plugins = ["_process_guard", "pytester"]

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[TemporaryPostgres | str]:
    """A PostgreSQL server for the session (or the one TORPOR_TEST_POSTGRES_URL names)."""
    external = os.environ.get("TORPOR_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    from _process_guard import outlives_tests  # a plugin: imported once pytest registered it

    server = TemporaryPostgres()
    outlives_tests(str(server.data))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _new_pg_database(postgres: TemporaryPostgres | str) -> str:
    if isinstance(postgres, str):
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return postgres.rsplit("/", 1)[0] + "/" + name
    return postgres.create_database()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'torpor.db'}"
    return _new_pg_database(request.getfixturevalue("postgres"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    try:
        yield s
    finally:
        s.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """Runs `python -m torpor` in a real subprocess against one database."""

    env: dict[str, str]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "torpor", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)


def torpor_env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORPOR_")}
    env.update(TORPOR_HOME=str(home), TORPOR_DATABASE_URL=db_url, **extra)
    return env


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    return Cli(torpor_env(db_url, tmp_path / "home"))
