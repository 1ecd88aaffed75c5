"""The snapshot road end to end: real sandboxes, real CRIU, real workers killed and stopped."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _criu_fixtures import criu  # noqa: F401 - fails or skips when CRIU is missing
from conftest import Cli
from torpor import RunRecord, RunStatus
from torpor.store import Store
from torpor.testing import WorkerGroup, WorkerProcess, process_tree, tree_rss_mb, wait_until

pytestmark = [pytest.mark.criu, pytest.mark.usefixtures("criu")]

FLOWS = Path(__file__).parent / "workflows" / "snap_flows.py"


@pytest.fixture
def workers(cli: Cli, tmp_path: Path) -> Iterator[WorkerGroup]:
    """Workers with the environment of ``cli`` (a test may add to it before starting one)."""
    try:
        with WorkerGroup("--lease", "1.5", env=cli.env, logs=tmp_path / "home") as group:
            yield group
    finally:
        # Sandboxes of workers a test killed and nobody restored (after a failure).
        cli("doctor", "--cleanup", timeout=120)


# CRIU on a loaded machine takes its time.
_until = functools.partial(wait_until, timeout=90)


def _start(cli: Cli, target: str, args: list[object], *options: str) -> str:
    """Enqueue a run of ``snap_flows.py:target`` on the snapshot road; its id."""
    return cli.ok("run", f"{FLOWS}:{target}", json.dumps(args), "--road", "snapshot",
                  "--detach", *options)  # fmt: skip


def _kinds(store: Store, run_id: str) -> list[str]:
    return [e.kind for e in store.read(run_id)]


def _run_until(
    cli: Cli,
    workers: WorkerGroup,
    store: Store,
    target: str,
    args: list[object],
    status: RunStatus = RunStatus.SUSPENDED,
) -> tuple[str, WorkerProcess]:
    """A run of ``target`` and a worker for it, once the run is ``status``."""
    run_id = _start(cli, target, args)
    worker = workers.start()
    _until(lambda: store.get_run(run_id).status is status, f"{run_id} to be {status.value}")
    return run_id, worker


def _ended(store: Store, run_id: str, timeout: float = 120) -> RunRecord:
    """The run once it has ended, which it must have done by completing."""
    done = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, f"{run_id} to end",
                  timeout=timeout)  # fmt: skip
    assert done.status is RunStatus.COMPLETED, (done.error, _kinds(store, run_id))
    return done


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
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    run_id, _ = _run_until(cli, workers, store, "memory_and_wait", [3])
    # Suspended: no process, no lease; a snapshot at the wait holds its state.
    assert not _sandbox_processes(cli.env["TORPOR_HOME"])
    record = store.get_run(run_id)
    assert record.lease_owner is None
    (snap,) = store.list_snapshots(run_id)
    assert snap.seq == record.last_seq - 1 and snap.stored_bytes > 0  # then "suspended"

    store.send_event(run_id, "go", {"ok": True})
    done = _ended(store, run_id)
    assert done.output == {
        "kept": [0, 1, 2],  # memory survived the checkpoint
        "got": {"ok": True},
        "file": "before\nafter\n",  # so did the open file and its offset
        "steps": ["0", "1", "2"],  # and the workspace; no step ran twice
    }
    kinds = _kinds(store, run_id)
    assert kinds.index("suspended") < kinds.index("restored") < kinds.index("event")
    assert [e for e in kinds if e == "step"] == ["step"] * 3


def test_sleep_suspends_and_survives_a_worker_restart(
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    run_id, first = _run_until(cli, workers, store, "sleeper", [10])
    first.kill()
    workers.start()
    done = _ended(store, run_id)
    # Measured inside the sandbox across the checkpoint: the sleep neither restarted nor
    # ended early.
    assert 10.0 <= done.output < 30.0
    (sleep,) = [e for e in store.read(run_id) if e.kind == "sleep"]
    restored = next(e for e in store.read(run_id) if e.kind == "restored")
    assert restored.created_at >= sleep.payload["until"] - 0.5


def test_sigterm_releases_the_run_with_a_snapshot_and_another_worker_finishes_it(
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    run_id, first = _run_until(cli, workers, store, "long_step", [4], RunStatus.RUNNING)
    time.sleep(2.5)  # well inside the 4-second step
    assert first.stop(timeout=60) == 0, first.log()
    record = store.get_run(run_id)
    assert record.status is RunStatus.QUEUED and record.lease_owner is None
    assert "released" in _kinds(store, run_id) and store.list_snapshots(run_id)
    workers.start()
    done = _ended(store, run_id)
    # The step was checkpointed mid-way and went on where it was: it started once.
    assert done.output == 2


def test_fork_from_a_snapshot_leaves_the_parent_alone(
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    parent, _ = _run_until(cli, workers, store, "memory_and_wait", [2])
    (snap,) = store.list_snapshots(parent)
    child = cli.ok("fork", parent, "--at", snap.id, "--detach")
    record = store.get_run(child)
    assert record.forked_from == parent and record.road.value == "snapshot"
    parent_log = store.read(parent)
    child_log = store.read(child)
    assert [(e.kind, e.payload) for e in child_log[: snap.seq]] == [
        (e.kind, e.payload) for e in parent_log[: snap.seq]
    ]
    assert child_log[-1].kind == "forked" and child_log[-1].payload["snapshot"] == snap.id

    store.send_event(child, "go", "child")
    done = _ended(store, child)
    assert (done.output["kept"], done.output["got"]) == ([0, 1], "child")
    assert store.get_run(parent).status is RunStatus.SUSPENDED  # untouched by its fork
    store.send_event(parent, "go", "parent")
    done = _ended(store, parent)
    assert (done.output["kept"], done.output["got"]) == ([0, 1], "parent")
    assert done.output["steps"] == ["0", "1"]  # the fork wrote nothing into its workspace


def test_snapshot_now_checkpoints_a_running_run(
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    run_id, _ = _run_until(cli, workers, store, "long_step", [6], RunStatus.RUNNING)
    time.sleep(1.5)
    made = cli.ok("snapshot", run_id)
    (snap,) = store.list_snapshots(run_id)
    assert made.startswith(snap.id) and snap.raw_bytes > 0
    listed = json.loads(cli.ok("snapshots", run_id, "--json"))
    assert [s["id"] for s in listed] == [snap.id]
    done = _ended(store, run_id)
    assert done.status is RunStatus.COMPLETED and done.output == 2  # not disturbed


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
    for proc in process_tree(pid):
        try:
            argv = Path(f"/proc/{proc}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"criu") for arg in argv) and b"dump" in argv:
            return True
    return False


@pytest.mark.timeout(600)
def test_workers_killed_at_random_moments_leave_no_trace(
    workers: WorkerGroup, cli: Cli, store: Store, request: pytest.FixtureRequest
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
        cli.env.update(
            OPENAI_API_KEY="k",
            TORPOR_CHECKPOINT_POLICY="step",
            OPENAI_BASE_URL=server.openai_base_url,
        )
        base = server.openai_base_url
        # The reference: the same workflow on a worker of its own that nobody kills.
        reference = _start(cli, "ten_steps", [base, "ref"], "--queue", "calm")
        workers.start("--queue", "calm")
        worker = workers.start("--queue", "default")
        crashed: list[str] = []
        for n, (k, where) in enumerate(points):
            run_id = _start(cli, "ten_steps", [base, f"r{n}"])
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
            worker.kill()
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
def test_fifty_waiting_runs_hold_disk_not_memory(
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    """50 runs waiting for an event are suspended: no process left, the worker's tree
    stays small; the events bring every one back to completion."""
    runs = [_start(cli, "waiter", []) for _ in range(50)]
    worker = workers.start("--concurrency", "4")
    _until(
        lambda: all(store.get_run(r).status is RunStatus.SUSPENDED for r in runs),
        "all 50 runs to suspend",
        timeout=300,
    )
    assert not _sandbox_processes(cli.env["TORPOR_HOME"])
    rss = tree_rss_mb(worker.pid)
    # A live waiting sandbox holds ~37 MB (docs/benchmarks.md): 50 would be ~1.8 GB.
    assert rss < 400, f"the worker's process tree holds {rss:.0f} MB for 50 suspended runs"
    for n, run_id in enumerate(runs):
        store.send_event(run_id, "go", n)
    for n, run_id in enumerate(runs):
        assert _ended(store, run_id, timeout=300).output == n


def test_a_divergence_after_restore_is_recorded_and_executed_afresh(
    workers: WorkerGroup, cli: Cli, store: Store, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # seen by the sandbox, as the worker's sys.path is
    shared.mkdir()
    flag = shared / "path.txt"
    flag.write_text("fast")
    cli.env["PYTHONPATH"] = str(shared)
    run_id = _start(cli, "diverger", [str(flag)])
    first = workers.start()
    _until(lambda: "step" in _kinds(store, run_id), "the fast path to be recorded")
    assert len(store.list_snapshots(run_id)) == 1  # torpor.checkpoint(), before the path
    first.kill()  # inside the 30-second step
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
    workers: WorkerGroup, cli: Cli, store: Store, tmp_path: Path
) -> None:
    deps = tmp_path / "deps"
    deps.mkdir()
    lib = deps / "libz-copy.so"
    shutil.copy2("/usr/lib/x86_64-linux-gnu/libz.so.1", lib)
    cli.env["PYTHONPATH"] = str(deps)  # shared with the sandbox, as a venv would be
    run_id, _ = _run_until(cli, workers, store, "mapped_library", [str(lib)])
    (snap,) = store.list_snapshots(run_id)

    original = lib.read_bytes(), lib.stat().st_mtime_ns
    lib.write_bytes(original[0] + b"\0" * 4096)  # "a deploy upgraded the library"
    store.send_event(run_id, "go", "after the deploy")
    failed = _until(lambda: (r := store.get_run(run_id)).status.terminal and r, "the refusal")
    assert failed.status is RunStatus.FAILED
    message = failed.error["message"]
    assert f"snapshot {snap.id} was taken over another base root: {lib} was" in message
    assert "Restore it on a worker with the same base root" in message
    assert not _sandbox_processes(cli.env["TORPOR_HOME"])
    assert "restored" not in _kinds(store, run_id)  # CRIU was never asked

    lib.write_bytes(original[0])  # the same base root again: the run resumes from its snapshot
    os.utime(lib, ns=(original[1], original[1]))
    cli.ok("resume", run_id, "--detach")
    assert _ended(store, run_id).output == "after the deploy"


def test_resume_from_an_older_snapshot_rolls_the_run_back(
    workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    run_id, _ = _run_until(cli, workers, store, "rollback_flow", [])
    store.send_event(run_id, "go", "once")
    first = _ended(store, run_id)
    assert first.output == {"first": 1, "second": 2, "got": "once", "steps": ["1", "2"]}
    checkpointed, suspended = store.list_snapshots(run_id)[:2]
    before = store.read(run_id)

    cli.ok("resume", run_id, "--from", checkpointed.id, "--detach")
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
    bad = cli("resume", run_id, "--from", "nope")
    assert bad.code == 1 and f"run {run_id} has no snapshot 'nope'" in bad.err
    left = cli("resume", run_id, "--from", suspended.id)
    assert left.code == 1 and "an earlier rollback left behind; fork it" in left.err
    assert store.get_run(run_id).status is RunStatus.COMPLETED
