"""Many `torpor worker` processes on one real PostgreSQL: one is SIGKILLed, one is SIGSTOPped
past its lease and continued, the database is restarted under them, and all of them are
down while timers come due and events arrive. Every run must still end exactly once.

What "exactly once" is checked against: step bodies of `workflows/worker_flows.py` append a
line per execution to a file outside the run (run, position, worker pid, fencing epoch,
time) and return the same facts, so the log's recorded result names the execution it came
from. A body may execute more than once only for an attempt that was cut off (killed,
stopped past its lease, or stopped by a database outage) before recording it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from _criu_fixtures import criu  # noqa: F401 - the snapshot-road part needs a working CRIU
from conftest import _new_pg_database, torpor_env
from torpor import RunStatus, Settings, StoreUnavailableError
from torpor._model import Road, RunRecord
from torpor.sandbox import Criu, find_orphans, remove_orphans
from torpor.store import Store, open_store
from torpor.testing import TemporaryPostgres, WorkerGroup, WorkerProcess, wait_until

FLOWS = Path(__file__).parent / "workflows" / "worker_flows.py"
LEASE = 2.0


# -- helpers ----------------------------------------------------------------------------


@contextmanager
def _workers(database: str, tmp_path: Path) -> Iterator[WorkerGroup]:
    """Workers on ``database``, each logging to its own file under tmp_path/logs; at the
    end, stopped and their sandboxes removed (a killed worker's outlive it and would hold
    CPU and mounts)."""
    home = tmp_path / "home"
    env = torpor_env(database, home)
    try:
        with WorkerGroup("--lease", str(LEASE), "--concurrency", "4", env=env,
                         logs=tmp_path / "logs") as group:  # fmt: skip
            yield group
    finally:
        settings = Settings(home=home, database_url=database, blob_url=f"file://{home}")
        remove_orphans(find_orphans(settings))


def _log_of_pid(workers: WorkerGroup, pid: int) -> str:
    return next((w.log() for w in workers if w.pid == pid), "")


def _holds(proc: WorkerProcess) -> Callable[[RunRecord], bool]:
    """Whether a run is leased by this worker process (worker ids are w-HOST-PID-HEX)."""
    return lambda run: run.lease_owner is not None and f"-{proc.pid}-" in run.lease_owner


def _unfinished(store: Store, ids: list[str]) -> str:
    """What the runs that have not ended are doing, for a failure message."""
    lines = []
    for run in _runs(store, ids):
        if not run.status.terminal:
            tail = [e.kind for e in store.read(run.id)][-6:]
            lines.append(
                f"{run.id} {run.road.value} {run.status.value} attempt {run.attempt} "
                f"owner {run.lease_owner} log ...{tail}"
            )
    return "\n".join(lines)


def _enqueue(store: Store, name: str, args: list[Any], *, road: Road = Road.REPLAY,
             priority: int = 0) -> str:  # fmt: skip
    return store.create_run(
        f"worker_flows.{name}",
        road=road,
        input={"args": args, "kwargs": {}},
        source={"file": str(FLOWS)},
        priority=priority,
    ).id


def _runs(store: Store, ids: list[str]) -> list[RunRecord]:
    return [store.get_run(i) for i in ids]


@dataclass(frozen=True)
class Execution:
    """One execution of a step body, as its side-effect line tells it."""

    run: int
    n: int
    pid: int
    epoch: int
    t: float


def _executions(path: Path) -> dict[tuple[int, int], list[Execution]]:
    found: dict[tuple[int, int], list[Execution]] = defaultdict(list)
    for line in path.read_text().splitlines():
        run, n, pid, epoch, t = line.split()
        ex = Execution(int(run), int(n), int(pid), int(epoch), float(t))
        found[(ex.run, ex.n)].append(ex)
    return found


def _check_log(store: Store, run: RunRecord) -> list[Any]:
    """A completed run's log: dense seqs from 1, one completion entry, at its end, and one
    recorded result per call position. Returns the entries."""
    entries = store.read(run.id)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1)), run.id
    assert entries[-1].seq == run.last_seq
    kinds = [e.kind for e in entries]
    assert kinds.count("completed") == 1 and kinds[-1] == "completed", (run.id, kinds)
    positions = [e.payload["pos"] for e in entries if e.kind == "step"]
    assert len(positions) == len(set(positions)), (run.id, positions)
    return entries


def _check_executions(
    store: Store,
    runs: dict[int, RunRecord],
    steps: int,
    executions: dict[tuple[int, int], list[Execution]],
    cut_off: Callable[[RunRecord, Execution], bool],
) -> list[tuple[RunRecord, Execution]]:
    """Compare what step bodies executed with what the logs recorded; returns the
    executions whose result was not recorded (each must satisfy ``cut_off``)."""
    unrecorded = []
    for index, run in runs.items():
        recorded = {
            e.payload["pos"]: e.payload["result"] for e in store.read(run.id) if e.kind == "step"
        }
        assert sorted(recorded) == list(range(1, steps + 1)), run.id
        for n in range(1, steps + 1):
            fact = recorded[n]
            done = executions[(index, n)]
            # The recorded result came from a real execution of this very call...
            assert [(x.pid, x.epoch) for x in done].count((fact["pid"], fact["epoch"])) == 1
            # ...and no attempt executed the body twice (these steps have no retries).
            assert len({x.epoch for x in done}) == len(done), (run.id, n, done)
            for x in done:
                if (x.pid, x.epoch) != (fact["pid"], fact["epoch"]):
                    # At-least-once: only an attempt that lost the run executes in vain.
                    assert x.epoch < fact["epoch"], (run.id, n, x, fact)
                    assert cut_off(run, x), (run.id, n, x)
                    unrecorded.append((run, x))
    return unrecorded


@pytest.fixture
def database(postgres: TemporaryPostgres | str) -> str:
    return _new_pg_database(postgres)


@pytest.fixture
def workers(database: str, tmp_path: Path) -> Iterator[WorkerGroup]:
    with _workers(database, tmp_path) as group:
        yield group


# -- kill, stop, continue ---------------------------------------------------------------


@pytest.mark.criu
@pytest.mark.timeout(300)
def test_three_workers_one_killed_one_stopped_every_run_completes_once(
    workers: WorkerGroup,
    database: str,
    tmp_path: Path,
    criu: Criu,  # noqa: F811
) -> None:
    steps, snap_steps = 6, 3
    effects = tmp_path / "effects.txt"
    effects.touch()
    store = open_store(database)
    try:
        # Each worker, started in turn, first claims two snapshot-road runs and two slow
        # replay-road runs (by priority), so that both roads are in flight on each worker.
        # Snapshot-road runs are checkpointed before each step is recorded: a takeover
        # restores the newest image.
        snap = {i: _enqueue(store, "snap_chaos", [i, snap_steps, 0.5], road=Road.SNAPSHOT)
                for i in range(100, 106)}  # fmt: skip
        replay = {
            i: _enqueue(store, "chaos", [str(effects), i, steps, 2.0 if i <= 6 else 0.25])
            for i in range(1, 55)
        }
        first_claims = [
            *(snap[100], snap[101], replay[1], replay[2]),
            *(snap[102], snap[103], replay[3], replay[4]),
            *(snap[104], snap[105], replay[5], replay[6]),
        ]
        with psycopg.connect(database, autocommit=True) as conn:
            for rank, run_id in enumerate(first_claims):
                conn.execute(
                    "UPDATE torpor_runs SET priority = %s WHERE id = %s",
                    (len(first_claims) - rank, run_id),
                )
        everything = [*snap.values(), *replay.values()]
        extra = {"TORPOR_CRIU": criu.path, "TORPOR_CHECKPOINT_POLICY": "step"}
        procs = []
        for _ in range(3):
            procs.append(workers.start(**extra))
            wait_until(
                lambda: sum(map(_holds(procs[-1]), _runs(store, everything))) == 4,
                "the worker to claim its first four runs",
            )
        killed, stopped, third = procs

        def in_flight(proc: WorkerProcess, road: Road) -> list[RunRecord]:
            return [
                r for r in _runs(store, everything)
                if _holds(proc)(r) and r.road is road and not r.status.terminal
            ]  # fmt: skip

        def stepped(proc: WorkerProcess) -> bool:
            """A snapshot-road run of this worker has recorded a step (so it has an image)."""
            return any(
                any(e.kind == "step" for e in store.read(r.id))
                for r in in_flight(proc, Road.SNAPSHOT)
            )

        # Once a snapshot-road run on each of the first two workers has an image, with both
        # roads in flight on them: kill the first, stop the second.
        wait_until(
            lambda: (
                stepped(killed)
                and stepped(stopped)
                and in_flight(killed, Road.REPLAY)
                and len(in_flight(stopped, Road.REPLAY)) >= 2
            ),
            "checkpointed runs and both roads in flight on the first two workers",
            timeout=90,
        )
        killed.kill()
        killed_at = time.time()
        stopped.pause()
        stopped_at = time.time()
        time.sleep(0.2)  # statements they had sent finish on the server
        held_by_killed = {
            r.id: r for r in _runs(store, everything) if _holds(killed)(r) and not r.status.terminal
        }
        assert Road.SNAPSHOT in {r.road for r in held_by_killed.values()}
        held_by_stopped = {
            r.id: r
            for r in _runs(store, everything)
            if _holds(stopped)(r) and not r.status.terminal
        }
        assert {r.road for r in held_by_stopped.values()} == {Road.SNAPSHOT, Road.REPLAY}
        wait_until(
            lambda: all(
                store.get_run(i).epoch > r.epoch or store.get_run(i).status.terminal
                for i, r in held_by_stopped.items()
            ),
            "the stopped worker's runs to be taken over",
            timeout=90,
            explain=lambda: _unfinished(store, [*held_by_stopped]),
        )
        assert time.time() - stopped_at > LEASE
        continued_at = time.time()
        stopped.resume()

        wait_until(
            lambda: all(r.status.terminal for r in _runs(store, everything)),
            "every run to end",
            timeout=150,
            explain=lambda: _unfinished(store, everything),
        )
        codes = workers.stop_all()
        assert codes[1:] == [0, 0], "the continued and the third worker exit cleanly"

        # Every run ended once, completed, with the right output and a well-formed log.
        for i, run_id in replay.items():
            run = store.get_run(run_id)
            assert run.status is RunStatus.COMPLETED, (run_id, run.error)
            assert run.output == [n * i for n in range(1, steps + 1)]
            _check_log(store, run)
        for i, run_id in snap.items():
            run = store.get_run(run_id)
            assert run.status is RunStatus.COMPLETED, (run_id, run.error)
            assert run.output["index"] == i
            assert run.output["squares"] == [n * n for n in range(1, snap_steps + 1)]
            written = run.output["written"]  # the workspace, restored with the process
            assert len(written) == len(set(written)), written
            _check_log(store, run)
        for run_id, before in [*held_by_killed.items(), *held_by_stopped.items()]:
            assert store.get_run(run_id).attempt > before.attempt  # went on elsewhere
            if before.road is Road.SNAPSHOT and any(
                s.created_at < killed_at for s in store.list_snapshots(run_id)
            ):
                # From its newest image, not from the top.
                assert "restored" in [e.kind for e in store.read(run_id)], run_id
        # A stopped worker's sandbox still runs: a run restored here before that worker
        # was continued had its stale copy (same sandbox id) killed first.
        for run in held_by_stopped.values():
            restored_at = [e.created_at for e in store.read(run.id) if e.kind == "restored"]
            if restored_at and restored_at[0] < continued_at:
                assert f"run {run.id}: sandbox" in third.log(), run.id

        # Step bodies against recorded results: a body ran in vain only in an attempt of
        # the killed or the stopped worker (or one that lost its lease, and said so).
        def cut_off(run: RunRecord, x: Execution) -> bool:
            if x.pid in (killed.pid, stopped.pid):
                return True
            return f"run {run.id}: lease lost" in _log_of_pid(workers, x.pid)

        executions = _executions(effects)
        replay_runs = {i: store.get_run(r) for i, r in replay.items()}
        _check_executions(store, replay_runs, steps, executions, cut_off)

        # Fencing: the stopped worker, once continued, finished the bodies it was inside,
        # but none of its results reached a log; it was told its lease was lost.
        late = []
        stopped_log = stopped.log()
        for run_id, before in held_by_stopped.items():
            if before.road is not Road.REPLAY:
                continue
            assert f"run {run_id}: lease lost" in stopped_log, run_id
            for entry in store.read(run_id):
                result = entry.payload.get("result") if entry.kind == "step" else None
                if isinstance(result, dict) and result.get("epoch") == before.epoch:
                    assert entry.created_at < continued_at, (run_id, entry)
            index = next(i for i, r in replay.items() if r == run_id)
            late += [
                x
                for n in range(1, steps + 1)
                for x in executions[(index, n)]
                if x.pid == stopped.pid and x.epoch == before.epoch and x.t >= continued_at
            ]
        assert late, "the continued worker executed no step body it had started"
        for x in late:
            (step,) = [
                e.payload["result"]
                for e in store.read(replay[x.run])
                if e.kind == "step" and e.payload["pos"] == x.n
            ]
            assert step["epoch"] > x.epoch  # recorded by the worker that took the run over
        restored = sum(e.kind == "restored" for run_id in snap.values() for e in store.read(run_id))
        print(
            f"killed worker held {len(held_by_killed)} runs, the stopped one "
            f"{len(held_by_stopped)}; {len(late)} late step bodies fenced off; "
            f"snapshot-road restores: {restored}; "
            f"attempts: {sorted(store.get_run(r).attempt for r in everything)}"
        )
    finally:
        store.close()


# -- the database restarts --------------------------------------------------------------


@pytest.fixture
def restartable() -> Iterator[TemporaryPostgres]:
    """A PostgreSQL of this test's own: restarting the session's would disturb others."""
    server = TemporaryPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_workers_ride_out_a_database_restart(
    restartable: TemporaryPostgres, tmp_path: Path
) -> None:
    url = restartable.create_database()
    steps = 30
    effects = tmp_path / "effects.txt"
    effects.touch()
    with _workers(url, tmp_path) as workers, open_store(url) as store:
        ids = {i: _enqueue(store, "chaos", [str(effects), i, steps, 0.03]) for i in range(1, 25)}
        procs = [workers.start() for _ in range(3)]
        wait_until(
            lambda: (
                sum(r.status is RunStatus.COMPLETED for r in _runs(store, [*ids.values()])) >= 4
            ),
            "the first runs to complete",
        )
        in_flight = [r.id for r in _runs(store, [*ids.values()]) if r.status is RunStatus.RUNNING]
        assert in_flight
        restartable.restart(down_seconds=2.0)

        wait_until(lambda: _all_ended(store, [*ids.values()]), "every run to end", timeout=120)
        assert [p.poll() for p in procs] == [None, None, None], "a worker died"
        logs = [p.log() for p in procs]
        assert any("the store is unreachable" in log for log in logs), logs
        assert workers.stop_all() == [0, 0, 0]

        runs = {i: store.get_run(r) for i, r in ids.items()}
        for i, run in runs.items():
            assert run.status is RunStatus.COMPLETED, (run.id, run.error)
            assert run.output == [n * i for n in range(1, steps + 1)]
            _check_log(store, run)

        def cut_off(run: RunRecord, x: Execution) -> bool:
            log = _log_of_pid(workers, x.pid)
            return f"run {run.id}: the store is unreachable" in log or (
                f"run {run.id}: lease lost" in log
            )

        _check_executions(store, runs, steps, _executions(effects), cut_off)


@pytest.mark.criu
@pytest.mark.timeout(180)
def test_snapshot_road_runs_ride_out_a_database_restart(
    restartable: TemporaryPostgres,
    tmp_path: Path,
    criu: Criu,  # noqa: F811
) -> None:
    url = restartable.create_database()
    steps = 10
    with _workers(url, tmp_path) as workers, open_store(url) as store:
        ids = {
            i: _enqueue(store, "snap_chaos", [i, steps, 0.3], road=Road.SNAPSHOT) for i in range(4)
        }
        procs = [workers.start(TORPOR_CRIU=criu.path) for _ in range(2)]
        wait_until(
            lambda: all(any(e.kind == "step" for e in store.read(r)) for r in ids.values()),
            "every sandbox to record a step",
        )
        assert not any(r.status.terminal for r in _runs(store, [*ids.values()]))
        restartable.restart(down_seconds=2.0)
        wait_until(lambda: _all_ended(store, [*ids.values()]), "every run to end", timeout=120)
        assert [p.poll() for p in procs] == [None, None], "a worker died"
        logs = "".join(p.log() for p in procs)
        assert "the store is unreachable" in logs, logs
        assert workers.stop_all() == [0, 0]
        for i, run_id in ids.items():
            run = store.get_run(run_id)
            assert run.status is RunStatus.COMPLETED, (run_id, run.error)
            assert run.output["index"] == i
            assert run.output["squares"] == [n * n for n in range(1, steps + 1)]
            _check_log(store, run)


def _all_ended(store: Store, ids: list[str]) -> bool:
    # The test's own store reconnects too: its first calls may meet dead connections.
    try:
        return all(r.status.terminal for r in _runs(store, ids))
    except StoreUnavailableError:
        return False


# -- all workers down -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_timers_and_events_due_while_no_worker_runs_are_delivered_after_one_starts(
    workers: WorkerGroup, database: str
) -> None:
    store = open_store(database)
    try:
        sleepers = [_enqueue(store, "wake_later", [2.0]) for _ in range(3)]
        waiters = [_enqueue(store, "wait_event", []) for _ in range(3)]
        first = workers.start("--park-after", "0.3")
        wait_until(
            lambda: all(
                r.status is RunStatus.WAITING and r.lease_owner is None
                for r in _runs(store, sleepers + waiters)
            ),
            "every run to park",
        )
        assert first.stop(timeout=30) == 0, first.log()
        # No worker runs: the events arrive and the timers come due.
        for n, run_id in enumerate(waiters):
            store.send_event(run_id, "answer", {"n": n})
        fire_at = max(t.fire_at for r in sleepers for t in store.list_timers(r))
        wait_until(lambda: time.time() > fire_at + 0.5, "the timers to come due")
        assert all(r.status is RunStatus.WAITING for r in _runs(store, sleepers + waiters))

        started = time.time()
        workers.start("--park-after", "0.3")
        workers.start("--park-after", "0.3")
        wait_until(
            lambda: all(r.status.terminal for r in _runs(store, sleepers + waiters)),
            "every run to end",
        )
        for run_id in sleepers:
            run = store.get_run(run_id)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.output == {"started": "started", "woke": "woke"}
            entries = _check_log(store, run)
            (sleep,) = [e for e in entries if e.kind == "sleep"]
            (timer,) = store.list_timers(run_id)
            assert timer.fire_at == sleep.payload["until"]
            woke = next(e for e in entries if e.kind == "step" and e.payload["result"] == "woke")
            assert woke.created_at >= started  # nothing ran while no worker did
        for n, run_id in enumerate(waiters):
            run = store.get_run(run_id)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.output == {"answer": {"n": n}}
            entries = _check_log(store, run)
            (event,) = [e for e in entries if e.kind == "event"]
            assert event.payload["payload"] == {"n": n} and event.created_at >= started
            assert [e.consumed_seq for e in store.list_events(run_id)] == [event.seq]
        assert workers.stop_all() == [0, 0, 0]
    finally:
        store.close()


def test_a_worker_stopped_while_it_starts_up_still_stops_cleanly(tmp_path: Path) -> None:
    """A worker told to stop before it got as far as claiming (a test or a deploy that stops
    it at once) exits 0, not killed by the SIGTERM it could not yet handle."""
    env = torpor_env(f"sqlite://{tmp_path / 'db'}", tmp_path / "home")
    worker = WorkerProcess(env=env, log=tmp_path / "worker.log")
    assert worker.stop(timeout=60) == 0, worker.log()
    assert "stopping: 0 run(s) in flight" in worker.log()
