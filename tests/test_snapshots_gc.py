"""Garbage collection never deletes a chunk that a listed or pending snapshot references:
a hypothesis property test over random save/delete/gc sequences, with collections and
deletions injected between every phase of a save; and real threads collecting while others
save.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_snapshots import make_checkpoint, new_run, stored_chunk_keys, tree_state
from torpor.snapshots import LocalBlobStore, SnapshotStore
from torpor.snapshots._manifest import read_header
from torpor.snapshots._markers import encode_marker, process_identity
from torpor.store import Store, open_store

PHASES = ["scanned", "pending", "known", "chunks", "manifest", "listed"]
VARIANTS = 4


def _variants(root: Path) -> list[Path]:
    """Checkpoint directories that share most of their chunks (same memory pages, in part)."""
    rng = random.Random(42)
    pool = [rng.randbytes(16384) for _ in range(6)]
    out = []
    for v in range(VARIANTS):
        pages = [(0x400000 + i * 0x10000, pool[(v + i) % 6]) for i in range(3)]
        out.append(make_checkpoint(root / f"v{v}", seed=v % 2, pages=pages))
    return out


save_op = st.tuples(
    st.just("save"),
    st.integers(0, 1),  # which run
    st.integers(0, VARIANTS - 1),  # which content
    st.sampled_from([None, *PHASES]),  # where a collection runs in the middle of the save
    st.booleans(),  # ... after deleting the run's newest snapshot (the save's parent)
)
ops = st.lists(
    st.one_of(save_op, st.tuples(st.just("delete"), st.integers(0, 20)), st.just(("gc",))),
    min_size=1,
    max_size=8,
)


def _check_all_listed_load(snaps: SnapshotStore, expected: dict[str, Path], scratch: Path) -> None:
    for sid, source in expected.items():
        out = scratch / f"load-{random.getrandbits(40):x}"
        assert tree_state(snaps.load(sid, out).directory) == tree_state(source)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=ops)
def test_gc_never_deletes_a_referenced_chunk(sequence: list[tuple], tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch_name:
        scratch = Path(scratch_name)
        variants = _variants(scratch / "src")
        store = open_store(f"sqlite://{scratch / 'torpor.db'}")
        snaps = SnapshotStore(store, LocalBlobStore(scratch / "blobs"))
        runs = [new_run(store), new_run(store)]
        expected: dict[str, Path] = {}
        deleted: set[str] = set()
        try:
            for op in sequence:
                if op[0] == "save":
                    _, r, v, phase, delete_parent = op

                    def hook(now: str, phase: str | None = phase, r: int = r,
                             delete_parent: bool = delete_parent) -> None:  # fmt: skip
                        if now != phase:
                            return
                        listed = snaps.list_snapshots(runs[r])
                        if delete_parent and listed:  # at "listed": the save's own
                            snaps.delete(listed[-1].id)
                            expected.pop(listed[-1].id, None)
                            deleted.add(listed[-1].id)
                        snaps.gc()

                    snaps._phase_hook = hook
                    sid = snaps.save(variants[v], run_id=runs[r], seq=len(expected) + 1)
                    snaps._phase_hook = None
                    if sid not in deleted:
                        expected[sid] = variants[v]
                elif op[0] == "delete" and expected:
                    sid = sorted(expected)[op[1] % len(expected)]
                    snaps.delete(sid)
                    del expected[sid]
                elif op[0] == "gc":
                    snaps.gc()
                _check_all_listed_load(snaps, expected, scratch)
            # With no save under way, a collection leaves exactly the referenced chunks.
            snaps.gc()
            referenced = set()
            for sid in expected:
                blob = snaps.blobs.get(f"manifests/{snaps.get(sid).manifest}")
                assert blob is not None
                referenced |= {c.hex() for c in read_header(blob).refs}
            assert stored_chunk_keys(snaps.blobs) == referenced
            _check_all_listed_load(snaps, expected, scratch)
        finally:
            store.close()


def test_save_waits_while_a_collection_runs(store: Store, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    snaps = SnapshotStore(store, blobs)
    run = new_run(store)
    source = make_checkpoint(tmp_path / "ck")
    blobs.put("gc/other-worker", encode_marker(process_identity()))  # a live collection
    done = threading.Event()
    saver = threading.Thread(
        target=lambda: (snaps.save(source, run_id=run, seq=1), done.set()), daemon=True
    )
    saver.start()
    assert not done.wait(0.5), "the save did not wait for the running collection"
    assert list(blobs.list("pending/")), "a waiting save shows its pending marker"
    blobs.delete("gc/other-worker")
    assert done.wait(10)
    saver.join()

    # A collection whose process is gone (a dead pid on this machine) blocks nobody.
    dead = {**process_identity(), "pid": 2**22 + 12345, "start": 1}
    blobs.put("gc/crashed-worker", encode_marker(dead))
    snaps.save(source, run_id=run, seq=2)
    with pytest.raises(Exception, match="garbage collection"):
        blobs.put("gc/slow", encode_marker(process_identity()))
        SnapshotStore(store, blobs, gc_wait=0.2).save(source, run_id=run, seq=3)


def test_collections_in_threads_beside_saves_and_deletes(store: Store, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    snaps = SnapshotStore(store, blobs)
    variants = _variants(tmp_path / "src")
    run = new_run(store)
    stop = threading.Event()
    errors: list[BaseException] = []

    def collect() -> None:
        try:
            while not stop.is_set():
                snaps.gc()
        except BaseException as exc:
            errors.append(exc)

    collectors = [threading.Thread(target=collect) for _ in range(2)]
    for t in collectors:
        t.start()
    expected: dict[str, Path] = {}
    rng = random.Random(3)
    deadline = time.monotonic() + 4
    try:
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            source = variants[rng.randrange(VARIANTS)]
            expected[snaps.save(source, run_id=run, seq=seq)] = source
            if len(expected) > 2 and rng.random() < 0.5:
                victim = rng.choice(sorted(expected))
                snaps.delete(victim)
                del expected[victim]
    finally:
        stop.set()
        for t in collectors:
            t.join()
    assert not errors
    assert seq >= 3
    _check_all_listed_load(snaps, expected, tmp_path)
