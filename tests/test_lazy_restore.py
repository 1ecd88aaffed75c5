"""Lazy restore on real CRIU: a 200 MB process whose memory checksum after a lazy restore
(from its own page images, and from the snapshot store) equals the one before; and the ways
the transfer can fail (the lazy-pages daemon killed, a damaged chunk) ending with the tree
killed, a clear error, and nothing left running or mounted.

Every test here is marked `criu`; see tests/_criu_fixtures.py for when they skip or fail.
"""

from __future__ import annotations

import shutil
import signal
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import _criu_fixtures
from _criu_fixtures import wait_for
from torpor import Road, Settings
from torpor.runtime.snapshot_road import restore
from torpor.sandbox import Checkpoint, Criu, CriuError, Sandbox, SandboxError
from torpor.snapshots import LocalBlobStore, SnapshotStore
from torpor.snapshots._load import read_manifest
from torpor.store import open_store

pytestmark = pytest.mark.criu

criu = _criu_fixtures.criu
settings = _criu_fixtures.settings

# 200 MB of random bytes (private anonymous memory: what a lazy restore leaves to the
# daemon); its sha256 printed at start and again for each /workspace/go-N.
HOLDER = textwrap.dedent(
    """
    import hashlib, os, time
    data = bytearray(os.urandom(200 << 20))
    print("sum", hashlib.sha256(data).hexdigest(), flush=True)
    n = 0
    while True:
        n += 1
        while not os.path.exists(f"/workspace/go-{n}"):
            time.sleep(0.01)
        print("sum", hashlib.sha256(data).hexdigest(), flush=True)
    """
)


@dataclass
class Stored:
    checkpoint: Checkpoint
    snaps: SnapshotStore
    blobs: LocalBlobStore
    snapshot_id: str
    digest: str


def _sums(box: Sandbox) -> list[str]:
    text = box.stdout_path.read_text() if box.stdout_path.exists() else ""
    return [line.split()[1] for line in text.splitlines() if line.startswith("sum ")]


def _checksum_after_turn(box: Sandbox, n: int) -> str:
    (box.workspace / f"go-{n}").touch()
    assert wait_for(lambda: len(_sums(box)) > n, timeout=60), box.stdout_path.read_text()
    return _sums(box)[n]


@pytest.fixture(scope="module")
def stored(criu: Criu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """One checkpoint of the 200 MB process, also saved in a snapshot store."""
    tmp = tmp_path_factory.mktemp("lazy")
    home = tmp / "home"
    config = Settings(home=home, database_url=f"sqlite://{tmp / 't.db'}", blob_url="")
    box = Sandbox.launch(["python3", "-c", HOLDER], settings=config)
    try:
        assert wait_for(lambda: len(_sums(box)) == 1, timeout=60), box.stdout_path.read_text()
        digest = _sums(box)[0]
        checkpoint = box.checkpoint(tmp / "ck")
    finally:
        box.teardown()
    store = open_store(f"sqlite://{tmp / 't.db'}")
    blobs = LocalBlobStore(tmp / "blobs")
    snaps = SnapshotStore(store, blobs)
    run = store.create_run("holder", road=Road.SNAPSHOT).id
    sid = snaps.save(checkpoint, run_id=run, seq=1)
    try:
        yield Stored(checkpoint, snaps, blobs, sid, digest)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_lazy_restore_from_the_page_images_keeps_memory_intact(
    settings: Settings, stored: Stored
) -> None:
    box = Sandbox.restore(stored.checkpoint, settings=settings, lazy=True)
    try:
        assert box.state.value == "running"
        assert _checksum_after_turn(box, 1) == stored.digest
        box.wait_pages(timeout=60)
        assert not box.pages_pending and box.lazy_error is None
        assert _checksum_after_turn(box, 2) == stored.digest
    finally:
        box.teardown()


def test_lazy_restore_from_the_store_keeps_memory_intact(
    settings: Settings, stored: Stored, tmp_path: Path
) -> None:
    restored = restore(
        stored.snaps, stored.snapshot_id, root=tmp_path / "restore", settings=settings, lazy=True
    )
    box = restored.sandbox
    try:
        assert restored.lazy
        # The lazy load left the process's memory out of the page images: ~200 MB of holes.
        pages = sorted((restored.directory / "images").glob("pages-*.img"))
        allocated = sum(p.stat().st_blocks * 512 for p in pages)
        assert allocated < 50 << 20, allocated
        # Such a directory must never be restored as it is.
        with pytest.raises(SandboxError, match="incomplete"):
            Sandbox.fork(Checkpoint.load(restored.directory), settings=settings)
        assert _checksum_after_turn(box, 1) == stored.digest
        box.wait_pages(timeout=120)
        assert box.lazy_error is None
        assert _checksum_after_turn(box, 2) == stored.digest
        # A dump of a lazily restored sandbox waits for its pages: nothing is left out.
        again = box.checkpoint(tmp_path / "again", leave_running=True)
        assert again.pages_complete and again.image_bytes > 200 << 20
    finally:
        box.teardown()
        shutil.rmtree(restored.directory, ignore_errors=True)


def test_a_killed_lazy_pages_daemon_kills_the_tree(
    settings: Settings, stored: Stored, tmp_path: Path
) -> None:
    restored = restore(
        stored.snaps, stored.snapshot_id, root=tmp_path / "restore", settings=settings, lazy=True
    )
    box = restored.sandbox
    try:
        assert box.pages_pending  # 200 MB from the store take well over a second here
        daemon = box._lazy._daemon  # type: ignore[union-attr]
        assert daemon is not None
        daemon.send_signal(signal.SIGKILL)
        assert box.wait(timeout=20) < 0  # killed, not left running on zeroed memory
        assert isinstance(box.lazy_error, CriuError)
        assert "pages stopped arriving" in str(box.lazy_error)
        with pytest.raises(CriuError, match="killed so that it never runs"):
            box.wait_pages(timeout=5)
        assert len(_sums(box)) == 1  # only the line from before the checkpoint
    finally:
        box.teardown()
        shutil.rmtree(restored.directory, ignore_errors=True)


def test_a_damaged_page_chunk_kills_the_lazily_restored_tree(
    settings: Settings, stored: Stored, tmp_path: Path
) -> None:
    snaps, blobs = stored.snaps, stored.blobs
    record = snaps.get(stored.snapshot_id)
    chunks, entries, indexes = read_manifest(snaps.blobs, snaps.codec, record)
    biggest = max((e for e in entries if e.path.startswith("images/pages-")), key=lambda e: e.size)
    middle = indexes[biggest.path][len(biggest.spans) // 2]  # inside the 200 MB bytearray
    chunk = chunks.refs[middle].hex()
    path = blobs.root / "chunks" / chunk[:2] / chunk
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    box = None
    try:
        # Page chunks are fetched after the restore: it succeeds, the damage shows later.
        restored = restore(snaps, record, root=tmp_path / "restore", settings=settings, lazy=True)
        box = restored.sandbox
        (box.workspace / "go-1").touch()  # reading all of its memory reaches the chunk
        assert box.wait(timeout=60) < 0
        assert isinstance(box.lazy_error, CriuError)
        assert chunk in str(box.lazy_error) and "page source failed" in str(box.lazy_error)
        assert len(_sums(box)) == 1  # no checksum of damaged memory was ever printed
    finally:
        path.write_bytes(original)
        if box is not None:
            box.teardown()
