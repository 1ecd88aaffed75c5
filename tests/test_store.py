"""The store and the context log, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
import pickle
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torpor import (
    ContextLog,
    FencedError,
    LogConflictError,
    PayloadTooLargeError,
    Road,
    RunNotFoundError,
    RunRecord,
    RunStateError,
    RunStatus,
    SchemaVersionError,
    SnapshotRecord,
    TorporError,
)
from torpor._model import new_run_id
from torpor.store import SCHEMA_VERSION, Store, open_store


def test_run_ids_are_short_readable_and_distinct() -> None:
    ids = {new_run_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for rid in list(ids)[:100]:
        assert rid.startswith("r-") and len(rid) == 15
        assert set(rid[2:]) <= set("0123456789abcdefghjkmnpqrstvwxyz")


def test_create_get_list_runs(store: Store) -> None:
    a = store.create_run("app:first", input={"x": 1})
    b = store.create_run("app:second", road=Road.SNAPSHOT, input=[1, 2], queue="q", priority=5)
    assert a.status is RunStatus.QUEUED and a.attempt == 0 and a.last_seq == 0
    got = store.get_run(b.id)
    assert (got.workflow, got.road, got.input, got.queue, got.priority) == (
        "app:second",
        Road.SNAPSHOT,
        [1, 2],
        "q",
        5,
    )
    assert [r.id for r in store.list_runs()] == [b.id, a.id]
    assert store.list_runs(statuses=[RunStatus.COMPLETED]) == []
    assert [r.id for r in store.list_runs(limit=1)] == [b.id]
    child = store.create_run("app:child", parent_id=a.id, forked_from=b.id)
    assert (child.parent_id, child.forked_from) == (a.id, b.id)


def test_unknown_run_is_a_clear_error(store: Store) -> None:
    with pytest.raises(RunNotFoundError, match="no run with id 'r-missing'"):
        store.get_run("r-missing")
    with pytest.raises(RunNotFoundError):
        store.read("r-missing")
    with pytest.raises(RunNotFoundError):
        store.append("r-missing", "user", {"text": "hi"})
    with pytest.raises(RunNotFoundError):
        store.send_event("r-missing", "go")


def test_append_and_read_dense_seqs(store: Store) -> None:
    run = store.create_run("app:wf")
    log = ContextLog(store)
    seqs = [log.append(run.id, "user", {"i": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    entries = log.read(run.id)
    assert [(e.seq, e.kind, e.payload) for e in entries] == [
        (i + 1, "user", {"i": i}) for i in range(5)
    ]
    assert [e.seq for e in log.read(run.id, after=2, limit=2)] == [3, 4]
    assert log.read(run.id, after=5) == []
    assert store.get_run(run.id).last_seq == 5


def test_expected_seq_conflict_fails_instead_of_forking(store: Store) -> None:
    run = store.create_run("app:wf")
    assert store.append(run.id, "a", 1, expected_seq=1) == 1
    with pytest.raises(LogConflictError) as info:
        store.append(run.id, "b", 2, expected_seq=1)
    assert (info.value.expected_seq, info.value.next_seq) == (1, 2)
    assert "append expected to write seq 1" in str(info.value)
    with pytest.raises(LogConflictError):
        store.append(run.id, "b", 2, expected_seq=5)
    assert [e.payload for e in store.read(run.id)] == [1]
    assert store.append(run.id, "b", 2, expected_seq=2) == 2


def test_oversized_payload_is_refused_naming_run_kind_and_size(db_url: str) -> None:
    from torpor import Settings

    settings = Settings.from_env()
    small = Settings(settings.home, db_url, settings.blob_url, max_payload_bytes=1000)
    with open_store(settings=small) as store:
        run = store.create_run("app:wf")
        store.append(run.id, "ok", "x" * 900)
        with pytest.raises(PayloadTooLargeError) as info:
            store.append(run.id, "tool_result", "x" * 2000)
        msg = str(info.value)
        assert run.id in msg and "tool_result" in msg and "2,002 bytes" in msg
        assert len(store.read(run.id)) == 1
        assert store.get_run(run.id).last_seq == 1


def test_default_payload_limit_is_16_mib(store: Store) -> None:
    run = store.create_run("app:wf")
    with pytest.raises(PayloadTooLargeError, match="16,777,216"):
        store.append(run.id, "blob", "x" * (16 * 1024 * 1024))


def test_non_json_payload_is_refused(store: Store) -> None:
    run = store.create_run("app:wf")
    with pytest.raises(TorporError, match="not JSON"):
        store.append(run.id, "bad", {"when": object()})
    with pytest.raises(TorporError, match="not JSON"):
        store.append(run.id, "bad", float("nan"))
    assert store.read(run.id) == []


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=json_values)
def test_any_json_payload_reads_back_equal(store: Store, payload: object) -> None:
    run = store.create_run("app:wf")
    store.append(run.id, "value", payload)
    assert store.read(run.id)[0].payload == payload


def test_follow_yields_entries_as_they_land(store: Store) -> None:
    run = store.create_run("app:wf")
    store.append(run.id, "first", 1)

    def writer() -> None:
        for i in range(2, 6):
            time.sleep(0.05)
            store.append(run.id, "next", i)
        claimed = store.claim_run("w", 30)
        assert claimed is not None
        store.update_run(run.id, claimed.epoch, status=RunStatus.COMPLETED)

    t = threading.Thread(target=writer)
    t.start()
    got = [e.payload for e in store.follow(run.id, stop_when_final=True, poll=0.01)]
    t.join()
    assert got == [1, 2, 3, 4, 5]


def test_claim_lease_and_fencing(store: Store) -> None:
    run = store.create_run("app:wf")
    first = store.claim_run("worker-a", lease_seconds=0.2)
    assert first is not None and first.id == run.id
    assert (first.status, first.lease_owner, first.epoch, first.attempt) == (
        RunStatus.RUNNING,
        "worker-a",
        1,
        1,
    )
    assert store.claim_run("worker-b", 30) is None  # the lease is live
    store.append(run.id, "step", 1, epoch=first.epoch)
    time.sleep(0.3)  # worker-a stalls past its lease
    second = store.claim_run("worker-b", 30)
    assert second is not None and (second.epoch, second.attempt) == (2, 2)
    with pytest.raises(FencedError) as info:
        store.append(run.id, "step", 2, epoch=first.epoch)
    assert (info.value.epoch, info.value.current_epoch) == (1, 2)
    with pytest.raises(FencedError):
        store.renew_lease(run.id, "worker-a", first.epoch, 30)
    with pytest.raises(FencedError):
        store.update_run(run.id, first.epoch, status=RunStatus.COMPLETED, output="stale")
    store.append(run.id, "step", 2, epoch=second.epoch)
    store.renew_lease(run.id, "worker-b", second.epoch, 30)
    done = store.update_run(run.id, second.epoch, status=RunStatus.COMPLETED, output={"ok": 1})
    assert (done.status, done.output, done.lease_owner) == (RunStatus.COMPLETED, {"ok": 1}, None)
    assert [e.payload for e in store.read(run.id)] == [1, 2]
    assert pickle.loads(pickle.dumps(info.value)).current_epoch == 2


def test_claim_order_queues_and_parked_runs(store: Store) -> None:
    low = store.create_run("app:low")
    high = store.create_run("app:high", priority=10)
    other = store.create_run("app:other", queue="gpu")
    assert store.claim_run("w", 30, queues=["gpu"]).id == other.id  # type: ignore[union-attr]
    assert store.claim_run("w", 30).id == high.id  # type: ignore[union-attr]
    claimed = store.claim_run("w", 30)
    assert claimed is not None and claimed.id == low.id
    # Parked without a lease until a time: not claimable before it, claimable after.
    store.update_run(
        low.id, claimed.epoch, status=RunStatus.SUSPENDED, wake_at=time.time() + 3600, release=True
    )
    assert store.claim_run("w", 30) is None
    # An event wakes it at once.
    store.send_event(low.id, "approval", {"ok": True})
    again = store.claim_run("w", 30)
    assert again is not None and again.id == low.id and again.attempt == 2
    assert [(e.name, e.payload, e.consumed_seq) for e in store.list_events(low.id)] == [
        ("approval", {"ok": True}, None)
    ]


def test_queue_limits_hold_across_claimers(store: Store, db_url: str) -> None:
    """At most N runs of a limited queue hold a live lease, whoever claims; a run that
    ends, parks or loses its lease frees its place."""
    gpu = [store.create_run("app:train", queue="gpu") for _ in range(6)]
    cpu = store.create_run("app:tidy", queue="cpu")
    limits = {"gpu": 2}
    # Eight claimers at once, each with its own connection(s): only two gpu runs go out.
    stores = [open_store(db_url) for _ in range(8)]
    claimed: list[RunRecord | None] = []
    barrier = threading.Barrier(len(stores))

    def claim(s: Store) -> None:
        barrier.wait()
        claimed.append(s.claim_run(f"w{id(s)}", 30, queue_limits=limits))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    got = sorted(r.queue for r in claimed if r is not None)
    assert got == ["cpu", "gpu", "gpu"]
    assert store.claim_run("w", 30, queue_limits=limits) is None  # gpu is full
    unlimited = store.claim_run("w", 30)  # a worker without the limit is not held back
    assert unlimited is not None and unlimited.queue == "gpu"  # three gpu leases now

    # Runs that end free their places; so does a lease that expires.
    for run in [unlimited, *(r for r in claimed if r is not None and r.queue == "gpu")][:2]:
        store.update_run(run.id, run.epoch, status=RunStatus.COMPLETED, output=1)
    short = store.claim_run("w", 0.3, queue_limits=limits)
    assert short is not None and short.queue == "gpu"
    assert store.claim_run("w", 30, queue_limits=limits) is None
    time.sleep(0.4)
    assert store.claim_run("w", 30, queue_limits=limits) is not None
    assert cpu.id in {r.id for r in claimed if r is not None} and len(gpu) == 6

    # A worker's limits also hold for runs it claims by id (a child, a start in-process).
    from torpor.runtime._executor import Executor

    executor = Executor(store, queue_limits=limits)
    try:
        waiting = next(r for r in gpu if store.get_run(r.id).status is RunStatus.QUEUED)
        assert not executor.claim(run_id=waiting.id)
    finally:
        executor.close()


def test_cancel(store: Store) -> None:
    queued = store.create_run("app:wf")
    assert store.cancel_run(queued.id).status is RunStatus.CANCELLED
    assert [e.kind for e in store.read(queued.id)] == ["cancelled"]
    with pytest.raises(RunStateError, match="is cancelled: cannot cancel"):
        store.cancel_run(queued.id)
    with pytest.raises(RunStateError, match="cannot deliver event"):
        store.send_event(queued.id, "go")

    running = store.create_run("app:wf")
    claimed = store.claim_run("w", 30)
    assert claimed is not None and claimed.id == running.id
    requested = store.cancel_run(running.id)
    assert requested.status is RunStatus.RUNNING and requested.cancel_requested
    assert [e.kind for e in store.read(running.id)] == ["cancel_requested"]


def test_rollback_fences_the_old_timeline_and_redelivers_events(store: Store) -> None:
    run = store.create_run("app:wf", road=Road.SNAPSHOT)
    claimed = store.claim_run("w1", 30, run_id=run.id)
    assert claimed is not None
    store.append_owned(run.id, "step", {"pos": 1}, epoch=claimed.epoch)  # seq 1
    store.send_event(run.id, "go", 1)
    store.send_event(run.id, "torpor.checkpoint", {})
    store.consume_event(run.id, "go", epoch=claimed.epoch, entry={"pos": 2})  # seq 2
    store.consume_event(run.id, "torpor.checkpoint", epoch=claimed.epoch, entry={})  # seq 3
    with pytest.raises(RunStateError, match="a worker executes it"):
        store.rollback_run(run.id, 1, {"snapshot": "s"})
    store.update_run(run.id, claimed.epoch, status=RunStatus.SUSPENDED, release=True)

    rolled = store.rollback_run(run.id, 1, {"snapshot": "s", "abandoned": []})
    assert rolled.status is RunStatus.QUEUED and rolled.epoch == claimed.epoch + 1
    last = store.read(run.id)[-1]
    assert (last.kind, last.payload["to_seq"], last.payload["from"]) == ("rollback", 1, "suspended")
    # The event consumed after seq 1 is delivered again; torpor's own request is not.
    events = {e.name: e.consumed_seq for e in store.list_events(run.id)}
    assert events["go"] is None and events["torpor.checkpoint"] is not None
    # The worker that held the run before writes nothing into the new timeline.
    with pytest.raises(FencedError):
        store.append_owned(run.id, "step", {"pos": 2}, epoch=claimed.epoch)
    with pytest.raises(ValueError, match="outside"):
        store.rollback_run(run.id, 999, {})


def test_failures_are_counted_since_the_last_progress(store: Store) -> None:
    """Three failures of torpor's own in a row fail a run; claims do not count (a run woken
    ten times is not closer to failing)."""
    from torpor.log import failures_in_a_row

    run = store.create_run("app:wf")
    for _ in range(10):  # ten wakes, each making progress
        store.append(run.id, "restored", {})
        store.append(run.id, "step", {"pos": 1})
    assert failures_in_a_row(store, run.id) == 0
    for kind in ("restored", "sandbox_died", "restored", "warning", "executor_failed"):
        store.append(run.id, kind, {})
    assert failures_in_a_row(store, run.id) == 2
    store.append(run.id, "resumed", {})  # a person queued it again: a fresh count
    assert failures_in_a_row(store, run.id) == 0


def test_only_a_lost_connection_is_an_outage() -> None:
    import psycopg

    from torpor.store._postgres import _connection_lost

    assert _connection_lost(psycopg.OperationalError("server closed the connection"))
    assert _connection_lost(psycopg.errors.AdminShutdown())
    assert _connection_lost(psycopg.errors.ConnectionFailure())
    assert not _connection_lost(psycopg.errors.DeadlockDetected())
    assert not _connection_lost(psycopg.errors.QueryCanceled())
    assert not _connection_lost(psycopg.errors.DiskFull())


def test_timers_and_snapshots(store: Store) -> None:
    run = store.create_run("app:wf", road=Road.SNAPSHOT)
    store.add_timer(run.id, "sleep-2", 200.0)
    store.add_timer(run.id, "sleep-1", 100.0)
    assert [t.name for t in store.list_timers(run.id)] == ["sleep-1", "sleep-2"]
    record = SnapshotRecord(
        id="s-1", run_id=run.id, seq=3, manifest="blake3:abc", created_at=time.time(),
        raw_bytes=7_500_000, stored_bytes=1_700_000, chunks=120, new_chunks=120,
        dump_ms=55.5, store_ms=12.25,
    )  # fmt: skip
    store.add_snapshot(record)
    assert store.list_snapshots(run.id) == [record]
    assert store.list_snapshots(run.id)[0].to_json()["stored_bytes"] == 1_700_000
    # Listed under a claim: a worker whose claim was superseded lists nothing.
    first = store.claim_run("w1", 0.05, run_id=run.id)
    assert first is not None
    time.sleep(0.1)
    second = store.claim_run("w2", 30, run_id=run.id)
    assert second is not None and second.epoch == first.epoch + 1
    stale = dataclasses.replace(record, id="s-2", seq=4)
    with pytest.raises(FencedError):
        store.add_snapshot(stale, epoch=first.epoch)
    store.add_snapshot(dataclasses.replace(stale, id="s-3"), epoch=second.epoch)
    assert [s.id for s in store.list_snapshots(run.id)] == ["s-1", "s-3"]


def test_schema_is_versioned_and_a_newer_one_is_refused(db_url: str) -> None:
    with open_store(db_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        run = store.create_run("app:wf")
    with open_store(db_url) as store:  # re-opening migrates nothing and keeps the data
        assert store.get_run(run.id).workflow == "app:wf"
        with store._write() as tx:  # type: ignore[attr-defined]
            tx.execute("INSERT INTO torpor_schema (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError) as info:
        open_store(db_url)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert "upgrade torpor" in str(info.value)


def test_errors_are_picklable() -> None:
    err = LogConflictError("r-1", 3, 5)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is LogConflictError and str(copy) == str(err) and copy.next_seq == 5
