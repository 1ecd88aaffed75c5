"""Fixtures: every store test runs on SQLite and on a real PostgreSQL started for the session;
the HTTP server's tests and the dashboard's share a live server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import uvicorn

from torpor import Client
from torpor.server import create_app
from torpor.store import Store, open_store
from torpor.testing import TemporaryPostgres, wait_until

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

    def ok(self, *args: str, timeout: float = 60) -> str:
        """Run it, assert that it succeeded, and return its stdout, stripped."""
        result = self(*args, timeout=timeout)
        assert result.code == 0, result.err
        return result.out.strip()


def torpor_env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORPOR_")}
    env.update(TORPOR_HOME=str(home), TORPOR_DATABASE_URL=db_url, **extra)
    return env


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    return Cli(torpor_env(db_url, tmp_path / "home"))


# -- a live HTTP server -------------------------------------------------------------------

TOKEN = "tp_test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Live:
    """`create_app` under uvicorn in a thread, on a free loopback port."""

    def __init__(self, store: Store, **options: int) -> None:
        self.app = create_app(store, TOKEN, **options)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=2, ws="none",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.start()
        try:
            wait_until(
                lambda: self.server.started or not self.thread.is_alive(),
                "the server to start",
                timeout=20,
                interval=0.01,
            )
            assert self.server.started, "the server did not start"
        except BaseException:
            self.close()
            raise

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def live(store: Store) -> Iterator[Live]:
    server = Live(store)
    yield server
    server.close()


@pytest.fixture
def http(live: Live) -> Iterator[httpx2.Client]:
    """A raw HTTP client of the live server, with the token."""
    with httpx2.Client(base_url=live.url, headers=AUTH, timeout=30) as client:
        yield client
