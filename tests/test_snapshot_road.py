"""The snapshot road end to end: real sandboxes, real CRIU, real workers killed and stopped."""

from __future__ import annotations

import json
import os
import random
import shutil
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

    def start(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        log = Path(self.env["TORPOR_HOME"]) / f"worker-{len(self.procs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:  # kept for the failure report
            proc = subprocess.Popen(
                [sys.executable, "-m", "torpor", "worker", "--lease", "1.5", *args],
                env={**self.env, **extra},
                stdout=out,
                stderr=out,
            )
        self.procs.append(proc)
        return proc

    def run(self, target: str, args: list[object], *options: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "torpor", "run", f"{FLOWS}:{target}", json.dumps(args),
             "--road", "snapshot", "--detach", *options],
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
        # Sandboxes of workers a test killed and nobody restored (after a failure).
        subprocess.run([sys.executable, "-m", "torpor", "doctor", "--cleanup"], env=self.env,
                       capture_output=True, timeout=120)  # fmt: skip


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
    run_id = workers.run("sleeper", [10])
    first = workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.SUSPENDED, "the sleep to suspend")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    workers.start()
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the run to end")
    assert done.status is RunStatus.COMPLETED, done.error
    # Measured inside the sandbox across the checkpoint: the sleep neither restarted nor
    # ended early.
    assert 10.0 <= done.output < 30.0
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


def _ended(store: Store, run_id: str, timeout: float = 120):
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, f"{run_id} to end",
                  timeout)  # fmt: skip
    assert done.status is RunStatus.COMPLETED, (done.error, _kinds(store, run_id))
    return done


def _expected_ten_steps(tag: str) -> dict:
    seen, turns, notes = [], "", ""
    for i in range(10):
        said = f"ok {tag} {i}"
        seen += [said, f"{i}:{said}"]
        turns += f"{i} {said}\n"
        notes += f"{i} {said}\n"
    return {"seen": seen, "turns": turns, "notes": notes}


def _criu_under(pid: int) -> bool:
    """Whether `criu dump` runs below ``pid`` (it may run through a private loader, so its
    command name need not be criu: the command line tells)."""
    from torpor.sandbox._inspect import tree_processes

    for proc in tree_processes(pid):
        try:
            argv = Path(f"/proc/{proc}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"criu") for arg in argv) and b"dump" in argv:
            return True
    return False


@pytest.mark.timeout(600)
def test_workers_killed_at_random_moments_leave_no_trace(
    workers: Workers, store: Store, request: pytest.FixtureRequest
) -> None:
    """A 10-step run with state in memory and files, checkpointed at every step, whose
    worker is SIGKILLed at a random moment of a random step (a different one for each run)
    or in the middle of a dump: a new worker finishes it with the result, files and model
    calls of an uninterrupted run.

    The kills land between model calls: a call in flight when its worker dies is sent
    again by design (at-least-once), what the guarantee excludes is paying twice for a
    call that completed.
    """
    from torpor.testing import ScriptedModelServer

    seed = int(os.environ.get("TORPOR_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    request.node.user_properties.append(("seed", seed))  # to replay a failure
    # One run is killed in a step, another while CRIU dumps it (at random steps; the other
    # database's session draws its own).
    points = [(rng.randrange(1, 10), "in step"), (rng.randrange(1, 10), "in dump")]

    with ScriptedModelServer(lambda req: f"ok {req.items[0].text}") as server:
        workers.env.update(OPENAI_API_KEY="k", TORPOR_CHECKPOINT_POLICY="step")
        base = server.openai_base_url
        # The reference: the same workflow on a worker of its own that nobody kills.
        reference = workers.run("ten_steps", [base, "ref"], "--queue", "calm")
        workers.start("--queue", "calm")
        worker = workers.start("--queue", "default")
        crashed: list[str] = []
        for n, (k, where) in enumerate(points):
            run_id = workers.run("ten_steps", [base, f"r{n}"])
            crashed.append(run_id)

            def at_point(
                run_id: str = run_id, k: int = k, where: str = where, pid: int = worker.pid
            ) -> bool:
                log = store.read(run_id)
                calls = sum(e.kind == "model_call" for e in log)
                if where == "in step":  # the model answered call k; the step sleeps
                    return calls == k and log[-1].kind == "model_call"
                return calls == k and _criu_under(pid)

            _until(at_point, f"{run_id} to reach step {k} ({where})", timeout=120)
            if where == "in step":
                time.sleep(rng.uniform(0.0, 0.3))  # the step sleeps 0.5 s
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            worker = workers.start("--queue", "default")
            done = _ended(store, run_id)
            assert done.output == _expected_ten_steps(f"r{n}"), (seed, k, where)
            assert done.attempt >= 2  # it was taken over, not finished before the kill
        assert _ended(store, reference).output == _expected_ten_steps("ref")
        asked = [req.items[0].text for req in server.calls]
        runs = [reference, *crashed]

    # The model server saw every call exactly once, over all runs and crashes.
    tags = ["ref"] + [f"r{n}" for n in range(len(points))]
    assert sorted(asked) == sorted(f"{tag} {i}" for tag in tags for i in range(10)), seed
    for run_id in runs:  # one recorded result per call, and a gap-free log
        log = store.read(run_id)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        for kind in ("model_call", "step"):
            positions = [e.payload["pos"] for e in log if e.kind == kind]
            assert len(positions) == len(set(positions)) == 10, (run_id, kind, positions)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # the production set-up
def test_fifty_waiting_runs_hold_disk_not_memory(workers: Workers, store: Store) -> None:
    """50 runs waiting for an event are suspended: no process left, the worker's tree
    stays small; the events bring every one back to completion."""
    runs = [workers.run("waiter", []) for _ in range(50)]
    worker = workers.start("--concurrency", "4")
    _until(
        lambda: all(store.get_run(r).status is RunStatus.SUSPENDED for r in runs),
        "all 50 runs to suspend",
        timeout=300,
    )
    assert not _sandbox_processes(workers.env["TORPOR_HOME"])
    rss = _tree_rss_mb(worker.pid)
    # A live waiting sandbox holds ~37 MB (docs/benchmarks.md): 50 would be ~1.8 GB.
    assert rss < 400, f"the worker's process tree holds {rss:.0f} MB for 50 suspended runs"
    for n, run_id in enumerate(runs):
        store.send_event(run_id, "go", n)
    for n, run_id in enumerate(runs):
        assert _ended(store, run_id, timeout=300).output == n


def _tree_rss_mb(pid: int) -> float:
    from torpor.sandbox._inspect import tree_processes

    total = 0
    for proc in tree_processes(pid):
        try:
            status = Path(f"/proc/{proc}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))  # fmt: skip
    return total / 1024


def test_a_divergence_after_restore_is_recorded_and_executed_afresh(
    workers: Workers, store: Store, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # seen by the sandbox, as the worker's sys.path is
    shared.mkdir()
    flag = shared / "path.txt"
    flag.write_text("fast")
    workers.env["PYTHONPATH"] = str(shared)
    run_id = workers.run("diverger", [str(flag)])
    first = workers.start()
    _until(lambda: "step" in _kinds(store, run_id), "the fast path to be recorded")
    assert len(store.list_snapshots(run_id)) == 1  # torpor.checkpoint(), before the path
    first.send_signal(signal.SIGKILL)  # inside the 30-second step
    first.wait(timeout=30)
    flag.write_text("slow")  # the world changed meanwhile
    workers.start()
    done = _ended(store, run_id)
    assert done.output == {"took": "slow"}
    log = store.read(run_id)
    (divergence,) = [e for e in log if e.kind == "divergence"]
    assert divergence.payload["recorded"] == "fast_path"
    assert divergence.payload["called"] == "slow_path"
    assert "executed afresh" in divergence.payload["message"]
    steps = [e.payload["name"] for e in log if e.kind == "step"]
    assert steps == ["fast_path", "slow_path", "slow_step"]  # both paths stay in history


def test_a_snapshot_over_another_base_root_is_refused_and_nothing_is_lost(
    workers: Workers, store: Store, tmp_path: Path
) -> None:
    deps = tmp_path / "deps"
    deps.mkdir()
    lib = deps / "libz-copy.so"
    shutil.copy2("/usr/lib/x86_64-linux-gnu/libz.so.1", lib)
    workers.env["PYTHONPATH"] = str(deps)  # shared with the sandbox, as a venv would be
    run_id = workers.run("mapped_library", [str(lib)])
    workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.SUSPENDED, "the run to suspend")
    (snap,) = store.list_snapshots(run_id)

    original = lib.read_bytes(), lib.stat().st_mtime_ns
    lib.write_bytes(original[0] + b"\0" * 4096)  # "a deploy upgraded the library"
    store.send_event(run_id, "go", "after the deploy")
    failed = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the refusal")
    assert failed.status is RunStatus.FAILED
    message = failed.error["message"]
    assert f"snapshot {snap.id} was taken over another base root: {lib} was" in message
    assert "Restore it on a worker with the same base root" in message
    assert not _sandbox_processes(workers.env["TORPOR_HOME"])
    assert "restored" not in _kinds(store, run_id)  # CRIU was never asked

    lib.write_bytes(original[0])  # the same base root again: the run resumes from its snapshot
    os.utime(lib, ns=(original[1], original[1]))
    resumed = _cli(workers, "resume", run_id, "--detach")
    assert resumed.returncode == 0, resumed.stderr
    assert _ended(store, run_id).output == "after the deploy"


def test_resume_from_an_older_snapshot_rolls_the_run_back(workers: Workers, store: Store) -> None:
    run_id = workers.run("rollback_flow", [])
    workers.start()
    _until(lambda: store.get_run(run_id).status is RunStatus.SUSPENDED, "the run to suspend")
    store.send_event(run_id, "go", "once")
    first = _ended(store, run_id)
    assert first.output == {"first": 1, "second": 2, "got": "once", "steps": ["1", "2"]}
    checkpointed, suspended = store.list_snapshots(run_id)[:2]
    before = store.read(run_id)

    rolled = _cli(workers, "resume", run_id, "--from", checkpointed.id, "--detach")
    assert rolled.returncode == 0, rolled.stderr
    again = _ended(store, run_id)
    # Back at torpor.checkpoint(): step 2 ran again in the workspace of that moment (one
    # "2", not two), and the event consumed after the snapshot was delivered again.
    assert again.output == first.output
    log = store.read(run_id)
    assert [(e.kind, e.payload) for e in log[: len(before)]] == [
        (e.kind, e.payload) for e in before
    ]  # history kept
    rollback = log[len(before)]
    assert rollback.kind == "rollback"
    assert rollback.payload["snapshot"] == checkpointed.id
    assert rollback.payload["to_seq"] == checkpointed.seq
    assert suspended.id in rollback.payload["abandoned"]
    restored = next(e for e in log[len(before) :] if e.kind == "restored")
    assert restored.payload["snapshot"] == checkpointed.id
    assert [e.payload["name"] for e in log[len(before) :] if e.kind == "step"] == ["record"]

    # Errors name what was wrong; a snapshot of the timeline left behind is not the run's
    # any more (it can be forked).
    bad = _cli(workers, "resume", run_id, "--from", "nope")
    assert bad.returncode == 1 and f"run {run_id} has no snapshot 'nope'" in bad.stderr
    left = _cli(workers, "resume", run_id, "--from", suspended.id)
    assert left.returncode == 1 and "an earlier rollback left behind; fork it" in left.stderr
    assert store.get_run(run_id).status is RunStatus.COMPLETED
