"""Attacks on the store, the snapshot store and the HTTP API (issue 15): each test tries the
attack for real (real databases, a real server on loopback, the real CLI in a subprocess)
and asserts it fails and changed nothing.

Threat model: the code in a sandbox (which writes to the store through its worker's
gateway, under its run's epoch) is hostile; the worker, the store and the operator are
trusted.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest

from conftest import AUTH, Cli, Live, torpor_env
from torpor import FencedError, RunStatus
from torpor.store import RunEndedError, Store, open_store

# -- terminal states are final ----------------------------------------------------------


def _claimed(store: Store, workflow: str = "app:wf") -> tuple[str, int]:
    run = store.create_run(workflow)
    claimed = store.claim_run("worker-a", 30, run_id=run.id)
    assert claimed is not None
    return run.id, claimed.epoch


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_a_forged_end_after_the_run_ended_is_refused(store: Store, status: RunStatus) -> None:
    """Attack 4: a sandbox holding the run's epoch sends update_run(completed, forged)
    after the run ended (and a worker finishing late does the same): refused, the status,
    output, error and log stay as they were."""
    run_id, epoch = _claimed(store)
    ended = store.update_run(
        run_id, epoch, status=status, output={"real": 1} if status is RunStatus.COMPLETED else None,
        error={"type": "X"} if status is RunStatus.FAILED else None, entry=(status.value, {}),
    )  # fmt: skip
    log_before = store.read(run_id)
    for forged in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.RUNNING, RunStatus.QUEUED):
        with pytest.raises(RunEndedError, match=f"is {status.value}: cannot set its status"):
            store.update_run(
                run_id, epoch, status=forged, output={"forged": True}, error=None,
                entry=("completed", {"forged": True}),
            )  # fmt: skip
    after = store.get_run(run_id)
    assert (after.status, after.output, after.error, after.epoch) == (
        ended.status, ended.output, ended.error, ended.epoch,
    )  # fmt: skip
    assert store.read(run_id) == log_before
    # The paths that stop on a lost lease stop here too: it is a FencedError.
    with pytest.raises(FencedError):
        store.update_run(run_id, epoch, status=RunStatus.COMPLETED, output="late")


def test_a_forged_log_entry_after_the_run_ended_is_refused(store: Store) -> None:
    """Attack 4: a forged log entry under the run's epoch after it completed: refused,
    the log unchanged; an operator's note (no epoch) still lands."""
    run_id, epoch = _claimed(store)
    store.append(run_id, "step", {"pos": 1}, epoch=epoch)
    store.update_run(run_id, epoch, status=RunStatus.COMPLETED, output=1, entry=("completed", {}))
    before = store.read(run_id)
    with pytest.raises(RunEndedError, match="cannot append 'assistant' to its log"):
        store.append(run_id, "assistant", {"text": "forged"}, epoch=epoch)
    with pytest.raises(RunEndedError):
        store.append_owned(run_id, "step", {"pos": 2}, expected_seq=len(before) + 1, epoch=epoch)
    assert store.read(run_id) == before
    assert store.get_run(run_id).last_seq == len(before)
    # Consuming an event under the epoch would log it: refused too (sent before the end).
    assert store.consume_event(run_id, "go", epoch=epoch, entry={}) is None
    store.append(run_id, "note", {"by": "operator"})
    assert [e.kind for e in store.read(run_id)][-1] == "note"


def test_a_cancelled_run_is_not_completed_by_a_late_worker(store: Store) -> None:
    """A worker whose lease expired still holds the epoch; the operator cancels the run
    (nobody holds it): the late worker's completion is refused."""
    run = store.create_run("app:wf")
    claimed = store.claim_run("worker-a", 0.05, run_id=run.id)
    assert claimed is not None
    time.sleep(0.2)  # the lease expires; the run is not held
    assert store.cancel_run(run.id).status is RunStatus.CANCELLED
    with pytest.raises(RunEndedError, match="is cancelled"):
        store.update_run(run.id, claimed.epoch, status=RunStatus.COMPLETED, output="late")
    assert store.get_run(run.id).status is RunStatus.CANCELLED
    assert store.get_run(run.id).output is None


def test_the_engine_reports_a_refused_end_as_such(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine's own end of a run the operator cancelled meanwhile: refused, and the
    worker's log says the run had ended (not that the lease was lost)."""
    from torpor.engine import end_run

    run = store.create_run("app:wf")
    claimed = store.claim_run("worker-a", 0.05, run_id=run.id)
    assert claimed is not None
    time.sleep(0.2)  # the lease expires: the cancel takes effect at once
    assert store.cancel_run(run.id).status is RunStatus.CANCELLED
    with caplog.at_level("WARNING"):
        assert end_run(store, claimed, RunStatus.COMPLETED, output="late") is False
    assert "had already ended (cancelled): this end was refused" in caplog.text
    assert store.get_run(run.id).status is RunStatus.CANCELLED
    assert store.get_run(run.id).output is None


def test_concurrent_forged_ends_leave_one_final_status(store: Store) -> None:
    """Many holders of the epoch race to end the run with different outputs: exactly one
    end lands; every other is refused; the stored output is the winner's."""
    run_id, epoch = _claimed(store)
    outcomes: list[object] = []
    lock = threading.Lock()

    def end(i: int) -> None:
        try:
            store.update_run(run_id, epoch, status=RunStatus.COMPLETED, output={"by": i},
                             entry=("completed", {"by": i}))  # fmt: skip
            result: object = i
        except RunEndedError:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=end, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "refused"]
    assert len(winners) == 1, outcomes
    assert store.get_run(run_id).output == {"by": winners[0]}
    assert [e.payload for e in store.read(run_id)] == [{"by": winners[0]}]


def test_operator_resume_and_rollback_start_a_new_timeline(store: Store) -> None:
    """Only the operator's paths reopen an ended run, and each starts a new epoch: the old
    timeline's holder cannot write into it, even before a worker claims it."""
    run_id, epoch = _claimed(store)
    store.update_run(run_id, epoch, status=RunStatus.FAILED, error={"type": "X"})
    resumed = store.requeue_run(run_id, {"retry": 1})
    assert resumed.status is RunStatus.QUEUED and resumed.epoch == epoch + 1
    with pytest.raises(FencedError):
        store.update_run(run_id, epoch, status=RunStatus.COMPLETED, output="forged")
    with pytest.raises(FencedError):
        store.append(run_id, "step", {"forged": True}, epoch=epoch)
    again = store.claim_run("worker-b", 30, run_id=run_id)
    assert again is not None
    done = store.update_run(run_id, again.epoch, status=RunStatus.COMPLETED, output="real")
    assert (done.status, done.output) == (RunStatus.COMPLETED, "real")
    rolled = store.rollback_run(run_id, 0, {"snapshot": "s"})
    assert rolled.status is RunStatus.QUEUED and rolled.output is None
    with pytest.raises(FencedError):
        store.update_run(run_id, again.epoch, status=RunStatus.COMPLETED, output="forged")


# -- snapshots are encrypted by default ---------------------------------------------------


def _key_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORPOR_")}
    env.update(TORPOR_HOME=str(home), **extra)
    return env


def test_the_default_key_is_generated_private_and_used(tmp_path: Path) -> None:
    """No key configured: one is generated under TORPOR_HOME (mode 0600) and snapshots
    are encrypted with it; the blob store alone does not give their contents away."""
    from torpor.snapshots import SnapshotKey

    home = tmp_path / "home"
    key = SnapshotKey.from_env(_key_env(home), home=home)
    assert key is not None
    path = home / "snapshot.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SnapshotKey.from_env(_key_env(home), home=home)
    assert again is not None and again.fingerprint == key.fingerprint


def test_two_workers_creating_the_key_at_once_share_one(tmp_path: Path) -> None:
    """Processes racing to create the key: every one ends with the winner's key."""
    home = tmp_path / "home"
    code = (
        "import sys; from pathlib import Path; from torpor.snapshots import SnapshotKey; "
        "h = Path(sys.argv[1]); print(SnapshotKey.from_env({}, home=h).fingerprint.hex())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home)],
            stdout=subprocess.PIPE,
            text=True,
            env=_key_env(home),
        )
        for _ in range(6)
    ]
    prints = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(prints) == 1 and len(next(iter(prints))) == 16, prints
    assert [p.name for p in home.iterdir()] == ["snapshot.key"]  # no temporary file left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    from torpor import ConfigError
    from torpor.snapshots import SnapshotKey

    home = tmp_path / "home"
    home.mkdir()
    generated = home / "snapshot.key"
    generated.write_text("ab" * 32 + "\n")
    generated.chmod(mode)
    with pytest.raises(ConfigError, match=r"readable by its group or others.*chmod 600"):
        SnapshotKey.from_env(_key_env(home), home=home)
    named = tmp_path / "cluster.key"
    named.write_text("cd" * 32 + "\n")
    named.chmod(mode)
    env = _key_env(home, TORPOR_SNAPSHOT_KEY_FILE=str(named))
    with pytest.raises(ConfigError, match=rf"{named}.*readable by its group or others"):
        SnapshotKey.from_env(env, home=home)
    named.chmod(0o600)
    assert SnapshotKey.from_env(env, home=home) is not None


def test_a_key_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """A link planted where the generated key lives is not followed (it could point at a
    key, or a file, the operator never chose)."""
    from torpor import ConfigError
    from torpor.snapshots import SnapshotKey

    home = tmp_path / "home"
    home.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("ef" * 32)
    target.chmod(0o600)
    (home / "snapshot.key").symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        SnapshotKey.from_env(_key_env(home), home=home)


def test_opting_out_is_explicit(tmp_path: Path) -> None:
    from torpor.snapshots import SnapshotKey

    home = tmp_path / "home"
    assert SnapshotKey.from_env(_key_env(home, TORPOR_SNAPSHOT_KEY="none"), home=home) is None
    assert not home.exists()  # nothing generated


def test_snapshots_saved_by_default_are_encrypted_and_old_plain_ones_restore(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no key configured, a saved snapshot is encrypted: its memory's bytes are in no
    blob, and it does not load without the key. One saved before, unencrypted (the same
    bytes, readable in the blobs), still restores with the default settings."""
    from torpor import Settings
    from torpor.snapshots import SnapshotKeyError, SnapshotStore

    for name in [k for k in os.environ if k.startswith("TORPOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TORPOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORPOR_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    secret = os.urandom(64 * 1024)  # incompressible, like a process's memory holding keys
    run_id, epoch = _claimed(store)

    def checkpoint(name: str) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "pages-1.img").write_bytes(secret)
        return directory

    def blobs_holding_the_secret() -> int:
        files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        return sum(secret[:4096] in p.read_bytes() for p in files)

    sealed_store = SnapshotStore.from_settings(store, Settings.from_env())
    assert sealed_store.codec.key is not None
    sealed = sealed_store.save(checkpoint("a"), run_id=run_id, seq=0, epoch=epoch)
    assert blobs_holding_the_secret() == 0
    with pytest.raises(SnapshotKeyError, match="encrypted and no key is configured"):
        SnapshotStore(store, sealed_store.blobs, key=None).load(sealed, tmp_path / "nokey")

    monkeypatch.setenv("TORPOR_SNAPSHOT_KEY", "none")
    plain_store = SnapshotStore.from_settings(store, Settings.from_env())
    assert plain_store.codec.key is None
    plain = plain_store.save(checkpoint("b"), run_id=run_id, seq=0, epoch=epoch)
    assert blobs_holding_the_secret() > 0  # the check above can see plain bytes

    monkeypatch.delenv("TORPOR_SNAPSHOT_KEY")
    default = SnapshotStore.from_settings(store, Settings.from_env())
    for sid, where in ((plain, "plain"), (sealed, "sealed")):
        loaded = default.load(sid, tmp_path / where)
        assert (loaded.directory / "pages-1.img").read_bytes() == secret


# -- the HTTP API's smaller holes ---------------------------------------------------------


def test_a_deeply_nested_event_body_is_a_400_without_traceback(
    live: Live, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """An event body of 100,000 nested arrays (and a run body likewise): 400 with one
    line, no traceback in the server's log, nothing delivered."""
    run = store.create_run("app:wf")
    deep = b"[" * 100_000 + b"]" * 100_000
    with httpx2.Client(base_url=live.url, headers=AUTH, timeout=60) as http:
        for path in (f"/v1/runs/{run.id}/events/go", "/v1/runs"):
            reply = http.post(path, content=deep, headers={"Content-Type": "application/json"})
            assert reply.status_code == 400, (path, reply.text)
            error = reply.json()["error"]
            assert error["type"] == "InvalidJSON" and "nest" in error["message"], error
            assert "\n" not in error["message"]
        assert http.get("/healthz").status_code == 200  # still serving
    assert store.list_events(run.id) == []
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_the_schema_needs_the_token(live: Live) -> None:
    """/openapi.json names every route and field: without the token, 401; a wrong one, 403;
    /docs is not served at all; /healthz alone answers anyone."""
    with httpx2.Client(base_url=live.url, timeout=30) as raw:
        missing = raw.get("/openapi.json")
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "Unauthorized"
        assert raw.get("/openapi.json", headers={"Authorization": "Bearer no"}).status_code == 403
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert raw.get(path).status_code == 404, path
        schema = raw.get("/openapi.json", headers=AUTH)
        assert schema.status_code == 200 and "/v1/runs" in schema.json()["paths"]
        assert raw.get("/healthz").status_code == 200


# -- read-only commands do not create a store ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("ps",), ("ps", "--all", "--json"), ("log", "r-1"), ("snapshots", "r-1"),
     ("send", "r-1", "go"), ("cancel", "r-1"), ("snapshot", "r-1")],
)  # fmt: skip
def test_read_only_commands_refuse_a_missing_sqlite_store(tmp_path: Path, args: tuple) -> None:
    where = tmp_path / "nonexistent" / "dir" / "x.db"
    url = f"sqlite://{where}"
    result = Cli(torpor_env(url, tmp_path / "home"))(*args)
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert f"no torpor store at {url}" in lines[0] and "torpor worker" in lines[0]
    assert not where.parent.exists() and not (tmp_path / "nonexistent").exists()


def test_read_only_commands_refuse_an_empty_postgres_database(
    tmp_path: Path, postgres: object
) -> None:
    from conftest import _new_pg_database

    url = _new_pg_database(postgres)  # type: ignore[arg-type]
    result = Cli(torpor_env(url, tmp_path / "home"))("ps")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "no torpor store at" in result.err and "has no torpor tables" in result.err
    import psycopg

    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass('torpor_schema')").fetchone()
    assert found is not None and found[0] is None  # nothing was created


def test_commands_that_write_still_create_the_store(tmp_path: Path) -> None:
    where = tmp_path / "new" / "torpor.db"
    url = f"sqlite://{where}"
    open_store(url).close()  # what `torpor worker` / `torpor run` do
    assert where.is_file()
    result = Cli(torpor_env(url, tmp_path / "home"))("ps")
    assert result.code == 0 and "no active runs" in result.out, result.err
