"""The context log under real concurrent processes and SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torpor.store import Store, open_store
from torpor.testing import wait_until

APPENDER = str(Path(__file__).with_name("_appender.py"))


def _start(url: str, run_id: str, mode: str, name: str, count: int = 0, **env: str):
    return subprocess.Popen(
        [sys.executable, APPENDER, url, run_id, mode, name, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _assert_intact_and_dense(store: Store, run_id: str) -> list[dict]:
    entries = store.read(run_id)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert store.get_run(run_id).last_seq == len(entries)
    for e in entries:
        p = e.payload
        assert hashlib.sha256(p["data"].encode()).hexdigest() == p["sha"], f"torn entry {e.seq}"
    return [e.payload for e in entries]


def test_eight_processes_with_expected_seq_give_dense_unique_seqs(store: Store) -> None:
    run = store.create_run("app:wf")
    per_writer = 25
    procs = [_start(store.url, run.id, "expected", f"w{n}", per_writer) for n in range(8)]
    conflicts = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        conflicts += int(out.strip())
    payloads = _assert_intact_and_dense(store, run.id)
    assert len(payloads) == 8 * per_writer
    written = sorted((p["writer"], p["i"]) for p in payloads)
    assert written == sorted((f"w{n}", i) for n in range(8) for i in range(per_writer))
    # Each writer's entries are in its own order.
    for n in range(8):
        assert [p["i"] for p in payloads if p["writer"] == f"w{n}"] == list(range(per_writer))
    print(f"{conflicts} expected_seq conflicts retried")


@pytest.mark.parametrize("kill_after", [0.3, 1.0])
def test_sigkill_mid_burst_leaves_complete_dense_log(store: Store, kill_after: float) -> None:
    run = store.create_run("app:wf")
    app = f"torpor-burst-{run.id}"
    proc = _start(store.url, run.id, "burst", "burst", PGAPPNAME=app)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # it is appending
    assert first.strip() == "1", proc.stderr.read() if proc.stderr else ""
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    acknowledged = [int(x) for x in [first, *proc.stdout.read().split()] if str(x).strip()]
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]
    if store.url.startswith("postgres"):
        # PostgreSQL finishes a killed client's COMMIT if it had already been sent: wait for
        # the server to end that session before reading, or the append in flight may land
        # between the read and the check below.
        _wait_for_sessions_to_end(store.url, app)
    payloads = _assert_intact_and_dense(store, run.id)
    # Every append the process saw committed is there; at most the one in flight is not.
    assert len(payloads) >= acknowledged[-1]
    assert [p["i"] for p in payloads] == list(range(len(payloads)))
    # The log and its lock are usable afterwards.
    with open_store(store.url) as again:
        assert again.append(run.id, "after", {"ok": True}) == len(payloads) + 1


def _wait_for_sessions_to_end(url: str, application_name: str) -> None:
    import psycopg

    def ended() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
        return row is not None and row[0] == 0

    wait_until(ended, f"PostgreSQL to end the killed appender's sessions ({application_name})")


def test_postgres_appends_to_different_runs_do_not_wait(postgres, tmp_path: Path) -> None:
    from conftest import _new_pg_database

    url = _new_pg_database(postgres)
    import psycopg

    with open_store(url) as store:
        busy = store.create_run("app:busy")
        free = store.create_run("app:free")
    # Another transaction holds run `busy`'s row lock, as an append in flight would.
    holder = psycopg.connect(url)
    holder.execute("UPDATE torpor_runs SET updated_at = updated_at WHERE id = %s", (busy.id,))
    try:
        lock_timeout = {"PGOPTIONS": "-c lock_timeout=2000"}
        writer = _start(url, free.id, "plain", "free", 50, **lock_timeout)
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        # Control: the same appender on the locked run times out, so the lock was real.
        blocked = _start(url, busy.id, "plain", "busy", 1, **lock_timeout)
        _, err = blocked.communicate(timeout=60)
        assert blocked.returncode != 0 and "lock timeout" in err
    finally:
        holder.rollback()
        holder.close()
    with open_store(url) as store:
        assert store.get_run(free.id).last_seq == 50
        assert store.get_run(busy.id).last_seq == 0
