"""The snapshot road end to end: real sandboxes, real CRIU, real workers killed and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _criu_fixtures import criu  # noqa: F401 - fails or skips when CRIU is missing
from conftest import torpor_env
from torpor import RunStatus
from torpor.store import Store

pytestmark = [pytest.mark.criu, pytest.mark.usefixtures("criu")]

FLOWS = Path(__file__).parent / "workflows" / "snap_flows.py"


class Workers:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        log = Path(self.env["TORPOR_HOME"]) / f"worker-{len(self.procs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:  # kept for the failure report
            proc = subprocess.Popen(
                [sys.executable, "-m", "torpor", "worker", "--lease", "1.5"],
                env={**self.env, **extra},
                stdout=out,
                stderr=out,
            )
        self.procs.append(proc)
        return proc

    def run(self, target: str, args: list[object]) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "torpor", "run", f"{FLOWS}:{target}", json.dumps(args),
             "--road", "snapshot", "--detach"],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def workers(db_url: str, tmp_path: Path):
    w = Workers(torpor_env(db_url, tmp_path / "home"))
    yield w
    w.close()


def _until(check, what: str, timeout: float = 90):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kinds(store: Store, run_id: str) -> list[str]:
    return [e.kind for e in store.read(run_id)]


def _sandbox_processes(home: str) -> list[int]:
    """Processes of sandboxes kept under ``home`` (their init's command line names it)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"_init.py" in cmd and home.encode() in cmd:
                found.append(int(pid))
    return found


def test_a_waiting_run_is_suspended_and_its_event_restores_it(
    workers: Workers, store: Store
) -> None:
    run_id = workers.run("memory_and_wait", [3])
    workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.SUSPENDED, "the run to suspend")
    # Suspended: no process, no lease; a snapshot at the wait holds its state.
    assert not _sandbox_processes(workers.env["TORPOR_HOME"])
    record = store.get_run(run_id)
    assert record.lease_owner is None
    (snap,) = store.list_snapshots(run_id)
    assert snap.seq == record.last_seq - 1 and snap.stored_bytes > 0  # then "suspended"

    store.send_event(run_id, "go", {"ok": True})
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the run to end")
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {
        "kept": [0, 1, 2],  # memory survived the checkpoint
        "got": {"ok": True},
        "file": "before\nafter\n",  # so did the open file and its offset
        "steps": ["0", "1", "2"],  # and the workspace; no step ran twice
    }
    kinds = _kinds(store, run_id)
    assert kinds.index("suspended") < kinds.index("restored") < kinds.index("event")
    assert [e for e in kinds if e == "step"] == ["step"] * 3


def test_sleep_suspends_and_survives_a_worker_restart(workers: Workers, store: Store) -> None:
    run_id = workers.run("sleeper", [6])
    first = workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.SUSPENDED, "the sleep to suspend")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    workers.start()
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the run to end")
    assert done.status is RunStatus.COMPLETED, done.error
    # Measured inside the sandbox across the checkpoint: the sleep neither restarted nor
    # ended early.
    assert 6.0 <= done.output < 30.0
    (sleep,) = [e for e in store.read(run_id) if e.kind == "sleep"]
    restored = next(e for e in store.read(run_id) if e.kind == "restored")
    assert restored.created_at >= sleep.payload["until"] - 0.5


def test_sigterm_releases_the_run_with_a_snapshot_and_another_worker_finishes_it(
    workers: Workers, store: Store
) -> None:
    run_id = workers.run("long_step", [4])
    first = workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.RUNNING, "the run to start")
    time.sleep(2.5)  # well inside the 4-second step
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0
    record = store.get_run(run_id)
    assert record.status is RunStatus.QUEUED and record.lease_owner is None
    assert "released" in _kinds(store, run_id) and store.list_snapshots(run_id)
    workers.start()
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the run to end")
    assert done.status is RunStatus.COMPLETED, done.error
    # The step was checkpointed mid-way and went on where it was: it started once.
    assert done.output == 2


def _cli(workers: Workers, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torpor", *args],
        env=workers.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_fork_from_a_snapshot_leaves_the_parent_alone(workers: Workers, store: Store) -> None:
    parent = workers.run("memory_and_wait", [2])
    workers.start()
    _until(lambda: store.get_run(parent).status is RunStatus.SUSPENDED, "the run to suspend")
    (snap,) = store.list_snapshots(parent)
    forked = _cli(workers, "fork", parent, "--at", snap.id, "--detach")
    assert forked.returncode == 0, forked.stderr
    child = forked.stdout.strip()
    record = store.get_run(child)
    assert record.forked_from == parent and record.road.value == "snapshot"
    parent_log = store.read(parent)
    child_log = store.read(child)
    assert [(e.kind, e.payload) for e in child_log[: snap.seq]] == [
        (e.kind, e.payload) for e in parent_log[: snap.seq]
    ]
    assert child_log[-1].kind == "forked" and child_log[-1].payload["snapshot"] == snap.id

    store.send_event(child, "go", "child")
    done = _until(lambda: (r := store.get_run(child)).status.terminal and r, "the fork to end")
    assert done.status is RunStatus.COMPLETED, done.error
    assert (done.output["kept"], done.output["got"]) == ([0, 1], "child")
    assert store.get_run(parent).status is RunStatus.SUSPENDED  # untouched by its fork
    store.send_event(parent, "go", "parent")
    done = _until(lambda: (r := store.get_run(parent)).status.terminal and r, "the parent")
    assert (done.output["kept"], done.output["got"]) == ([0, 1], "parent")
    assert done.output["steps"] == ["0", "1"]  # the fork wrote nothing into its workspace


def test_snapshot_now_checkpoints_a_running_run(workers: Workers, store: Store) -> None:
    run_id = workers.run("long_step", [6])
    workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.RUNNING, "the run to start")
    time.sleep(1.5)
    made = _cli(workers, "snapshot", run_id)
    assert made.returncode == 0, made.stderr
    (snap,) = store.list_snapshots(run_id)
    assert made.stdout.startswith(snap.id) and snap.raw_bytes > 0
    listed = json.loads(_cli(workers, "snapshots", run_id, "--json").stdout)
    assert [s["id"] for s in listed] == [snap.id]
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the run to end")
    assert done.status is RunStatus.COMPLETED and done.output == 2  # not disturbed
