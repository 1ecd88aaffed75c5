"""The snapshot store on real CRIU checkpoints of real sandboxes: byte-identical round trips
that restore and resume, the size of a live agent's second snapshot, and the runtime-level
restore falling back past a damaged snapshot.

Every test here is marked `criu`; see tests/_criu_fixtures.py for when they skip or fail.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import _criu_fixtures
from _criu_fixtures import wait_for
from test_snapshots import stored_chunk_keys, tree_state
from torpor import Road, Settings
from torpor.runtime.snapshot_road import restore_latest
from torpor.sandbox import Sandbox
from torpor.snapshots import LocalBlobStore, SnapshotKey, SnapshotStore
from torpor.snapshots._manifest import read_header
from torpor.store import Store

pytestmark = pytest.mark.criu

criu = _criu_fixtures.criu
settings = _criu_fixtures.settings

# An agent that works in turns: each turn grows its conversation in memory, writes a file in
# the workspace and prints the turn number. /workspace/go-N lets turn N start.
AGENT = textwrap.dedent(
    """
    import json, os, time
    history = []
    turn = 0
    while True:
        turn += 1
        while not os.path.exists(f"/workspace/go-{turn}"):
            time.sleep(0.01)
        history.append({"role": "assistant", "turn": turn, "text": "thinking " * 200})
        with open("/workspace/notes.json", "w") as f:
            json.dump(history[-3:], f)
        print(turn, len(history), flush=True)
    """
)


def _turns(box: Sandbox) -> list[int]:
    lines = box.stdout_path.read_text().split() if box.stdout_path.exists() else []
    return [int(x) for x in lines[0::2]]


def _take_turn(box: Sandbox, n: int) -> None:
    (box.workspace / f"go-{n}").touch()
    assert wait_for(lambda: n in _turns(box), timeout=20), box.stdout_path.read_text()


def test_real_checkpoint_round_trip_restores_and_resumes(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    snaps = SnapshotStore(store, LocalBlobStore(tmp_path / "blobs"), key=SnapshotKey.generate())
    run = store.create_run("agent", road=Road.SNAPSHOT).id
    box = Sandbox.launch(["python3", "-c", AGENT], settings=settings)
    restored = None
    try:
        _take_turn(box, 1)
        checkpoint = box.checkpoint(tmp_path / "ck")
        sid = snaps.save(checkpoint, run_id=run, seq=1)
        record = snaps.get(sid)
        assert record.dump_ms > 0 and record.raw_bytes >= checkpoint.image_bytes
        loaded = snaps.load(sid, tmp_path / "loaded")
        # Every CRIU image and every file of the layers, byte for byte, with its metadata.
        assert tree_state(loaded.directory) == tree_state(checkpoint.directory)

        restored = Sandbox.restore(loaded.checkpoint(), settings=settings)
        _take_turn(restored, 2)  # memory survived: the turn counter goes on
        assert restored.stdout_path.read_text().split()[-2:] == ["2", "2"]
    finally:
        for b in (restored, box):
            if b is not None:
                b.teardown()


def test_second_snapshot_of_a_live_agent_stores_a_small_fraction(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    snaps = SnapshotStore(store, LocalBlobStore(tmp_path / "blobs"))
    run = store.create_run("agent", road=Road.SNAPSHOT).id
    box = Sandbox.launch(["python3", "-c", AGENT], settings=settings)
    try:
        _take_turn(box, 1)
        first = snaps.get(snaps.save(box.checkpoint(tmp_path / "c1", leave_running=True),
                                     run_id=run, seq=1))  # fmt: skip
        _take_turn(box, 2)
        second = snaps.get(snaps.save(box.checkpoint(tmp_path / "c2", leave_running=True),
                                      run_id=run, seq=2))  # fmt: skip
    finally:
        box.teardown()
    # Measured here (CRIU 4.2.1, 4 KiB windows): first 1.74 MB, second 152 kB (8.8 %),
    # 90 of 1,630 chunks new. Bounds with ~50 % margin.
    assert first.stored_bytes < 3_000_000, first
    assert second.stored_bytes < 0.13 * first.stored_bytes, (first, second)
    assert second.stored_bytes < 230_000, second
    assert second.new_chunks < 0.1 * second.chunks, second


def test_restore_latest_falls_back_past_a_damaged_snapshot(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    snaps = SnapshotStore(store, blobs)
    run = store.create_run("agent", road=Road.SNAPSHOT).id
    box = Sandbox.launch(["python3", "-c", AGENT], settings=settings)
    restored = None
    try:
        _take_turn(box, 1)
        good = snaps.save(box.checkpoint(tmp_path / "c1", leave_running=True), run_id=run, seq=1)
        _take_turn(box, 2)
        bad = snaps.save(box.checkpoint(tmp_path / "c2"), run_id=run, seq=2)
        box.teardown()

        def refs(sid: str) -> set[str]:
            blob = blobs.get(f"manifests/{snaps.get(sid).manifest}")
            assert blob is not None
            return {c.hex() for c in read_header(blob).refs}

        chunk = sorted(refs(bad) - refs(good))[0]
        assert chunk in stored_chunk_keys(blobs)
        path = blobs.root / "chunks" / chunk[:2] / chunk
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))

        restored = restore_latest(snaps, run, root=tmp_path / "restore", settings=settings)
        assert restored.record.id == good
        [skipped] = restored.skipped
        assert skipped.snapshot_id == bad and skipped.chunk == chunk
        assert restored.fetch_ms > 0 and restored.restore_ms > 0
        _take_turn(restored.sandbox, 2)  # back at turn 1: it runs turn 2 again
    finally:
        if restored is not None:
            restored.sandbox.teardown()
        box.teardown()
