"""The snapshot store on synthetic checkpoint directories: round trips on a local directory and
on a real S3-compatible server (moto, over HTTP on loopback), with and without encryption;
dedup; verification; wrong keys; atomic listing under SIGKILL; deletion, retention and gc.

Real CRIU checkpoints are in test_snapshots_criu.py; gc under concurrency in
test_snapshots_gc.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor import ConfigError, Road, RunStatus
from torpor.snapshots import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    SnapshotCorruptError,
    SnapshotKey,
    SnapshotKeyError,
    SnapshotNotFoundError,
    SnapshotStore,
    format_snapshots,
    open_blob_store,
)
from torpor.snapshots._manifest import read_header
from torpor.snapshots._pagemap import read_pagemap
from torpor.store import Store

# -- helpers shared with the other snapshot tests ------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pagemap_image(pages_id: int, runs: list[tuple[int, int]]) -> bytes:
    """A CRIU 4.2 pagemap image: magic, head, entries {vaddr, nr_pages=0, flags, nr_pages64}."""
    out = bytearray(struct.pack("<II", 0x54564319, 0x56084025))
    head = b"\x08" + varint(pages_id)
    out += struct.pack("<I", len(head)) + head
    for vaddr, nr in runs:
        msg = b"\x08" + varint(vaddr) + b"\x10\x00" + b"\x20\x04" + b"\x28" + varint(nr)
        out += struct.pack("<I", len(msg)) + msg
    return bytes(out)


def make_checkpoint(
    root: Path, *, seed: int = 0, pages: list[tuple[int, bytes]] | None = None
) -> Path:
    """A directory shaped like a sandbox checkpoint: CRIU-like images (a pagemap and its
    pages, small images), an upper layer with a whiteout, a symlink and an xattr, and a
    workspace. ``pages`` are (vaddr, bytes) runs; by default 64 pages of half-compressible
    memory."""
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True)
    if pages is None:
        pages = [(0x400000, _memory(rng, 40)), (0x7F0000000000, _memory(rng, 24))]
    (images / "pagemap-1.img").write_bytes(
        pagemap_image(1, [(vaddr, len(data) // 4096) for vaddr, data in pages])
    )
    (images / "pages-1.img").write_bytes(b"".join(data for _, data in pages))
    (images / "core-1.img").write_bytes(bytes(rng.randrange(256) for _ in range(2600)))
    (images / "inventory.img").write_bytes(b"\x19\x43\x56\x54" + b"inv")
    upper = root / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "conf").write_text("a=1\n")
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    os.setxattr(upper / "etc", "user.torpor-test", b"opaque")
    (upper / "etc" / "link").symlink_to("conf")
    os.mkfifo(upper / "fifo")
    ws = root / "workspace"
    (ws / "deep" / "er").mkdir(parents=True)
    (ws / "notes.md").write_text(f"notes {seed}\n" * 50)
    (ws / "empty").touch()
    (ws / "big.bin").write_bytes(rng.randbytes(300_000))
    os.chmod(ws / "notes.md", 0o640)
    os.chmod(ws / "deep", 0o751)
    (root / "checkpoint.json").write_text(json.dumps({"seed": seed}))
    return root


def _memory(rng: random.Random, n_pages: int) -> bytes:
    """Pages that are half text-like (compressible), half random."""
    out = bytearray()
    for i in range(n_pages):
        if i % 2:
            out += rng.randbytes(4096)
        else:
            out += (f"page {i} {rng.random():.6f} " * 300).encode()[:4096]
    return bytes(out)


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a round trip must keep: type, mode, owner, mtime, size, contents, link
    target, device number, extended attributes."""
    state: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        kind = stat.S_IFMT(st.st_mode)
        content: object = None
        if stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        xattrs = (
            {}
            if stat.S_ISLNK(st.st_mode)
            else {n: os.getxattr(path, n) for n in os.listxattr(path)}
        )
        mtime = st.st_mtime_ns if rel != "." else None  # the root's own time is not kept
        state[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime,
                      content, st.st_rdev, xattrs)  # fmt: skip
    return state


def new_run(store: Store, status: RunStatus | None = None) -> str:
    return store.create_run("snapshots.test", road=Road.SNAPSHOT).id


def stored_chunk_keys(blobs: BlobStore) -> set[str]:
    return {i.key.rsplit("/", 1)[1] for i in blobs.list("chunks/")}


# -- an S3-compatible server on loopback ---------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server, a real HTTP server on 127.0.0.1, for the session. In a thread of
    this process rather than a subprocess: the s3 tests start it on demand, and a subprocess
    started by one test and outliving it is what the process guard fails a test for."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("moto's server is not installed: pip install 'moto[server]'")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS variables pointing at moto, and a fresh bucket; returns its s3:// URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    import boto3

    bucket = f"b{random.getrandbits(48):x}"
    client = boto3.session.Session().client("s3")
    client.create_bucket(Bucket=bucket)
    client.close()
    return f"s3://{bucket}/torpor/snaps"


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        store: BlobStore = LocalBlobStore(tmp_path / "blobs")
    else:
        store = open_blob_store(request.getfixturevalue("s3_env"))
        assert isinstance(store, S3BlobStore)
    try:
        yield store
    finally:
        store.close()


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_round_trip_is_byte_identical(
    store: Store, blobs: BlobStore, tmp_path: Path, encrypted: bool
) -> None:
    key = SnapshotKey.generate() if encrypted else None
    snaps = SnapshotStore(store, blobs, key=key)
    run = new_run(store)
    source = make_checkpoint(tmp_path / "ck")
    sid = snaps.save(source, run_id=run, seq=3, dump_ms=12.5)

    loaded = snaps.load(sid, tmp_path / "out")
    assert tree_state(loaded.directory) == tree_state(source)
    files = [p for p in source.rglob("*") if p.is_file() and not p.is_symlink()]
    assert loaded.raw_bytes == sum(p.stat().st_size for p in files)

    [record] = snaps.list_snapshots(run)
    assert (record.id, record.run_id, record.seq, record.dump_ms) == (sid, run, 3, 12.5)
    assert record.new_chunks == record.chunks > 0
    assert 0 < record.stored_bytes < record.raw_bytes
    row = snaps.rows(run)[0]
    for name in ("id", "run_id", "seq", "created_at", "raw_bytes", "stored_bytes", "chunks",
                 "new_chunks", "dump_ms", "store_ms"):  # fmt: skip
        assert name in row
    assert sid in format_snapshots([record])

    if encrypted:  # nothing of the plain contents is visible in the stored blobs
        marker = b"notes 0\nnotes 0\n"
        for info in blobs.list(""):
            data = blobs.get(info.key) or b""
            assert marker not in data and b"page 0 0." not in data


def test_second_snapshot_stores_only_what_changed(store: Store, tmp_path: Path) -> None:
    snaps = SnapshotStore(store, LocalBlobStore(tmp_path / "blobs"))
    run = new_run(store)
    rng = random.Random(1)
    low, high = _memory(rng, 64), _memory(rng, 64)
    first = snaps.save(
        make_checkpoint(tmp_path / "a", pages=[(0x400000, low), (0x7F0000000000, high)]),
        run_id=run, seq=1,
    )  # fmt: skip
    # Next turn: a new mapping appears at a lower address (shifting every page's offset in
    # pages-1.img) and one page of the high mapping changes.
    changed = bytearray(high)
    changed[5 * 4096 : 5 * 4096 + 100] = b"x" * 100
    second = snaps.save(
        make_checkpoint(
            tmp_path / "b",
            pages=[(0x200000, _memory(rng, 2)), (0x400000, low), (0x7F0000000000, bytes(changed))],
        ),
        run_id=run, seq=2,
    )  # fmt: skip
    a, b = snaps.get(first), snaps.get(second)
    # Pages are cut at address windows, so the shifted pages still deduplicate: only the new
    # mapping, the changed window and the small files are stored again.
    assert b.new_chunks <= 12, b
    assert b.stored_bytes < a.stored_bytes * 0.25, (a, b)
    assert tree_state(snaps.load(second, tmp_path / "out").directory) == tree_state(tmp_path / "b")


def test_pagemap_reader_matches_criu_layout() -> None:
    image = pagemap_image(7, [(0x400000, 3), (0x7FFF_0000_0000, 1 << 33)])
    pages_id, runs = read_pagemap(image)
    assert pages_id == 7
    assert [(r.vaddr, r.nr_pages) for r in runs] == [(0x400000, 3), (0x7FFF_0000_0000, 1 << 33)]
    with pytest.raises(ValueError, match="not a CRIU pagemap"):
        read_pagemap(b"\x00" * 16)


# -- verification and keys -----------------------------------------------------------------


def _chunk_only_in(snaps: SnapshotStore, newer: str, older: str) -> str:
    def refs(sid: str) -> set[bytes]:
        blob = snaps.blobs.get(f"manifests/{snaps.get(sid).manifest}")
        assert blob is not None
        return set(read_header(blob).refs)

    return sorted(refs(newer) - refs(older))[0].hex()


def test_flipped_byte_fails_the_load_naming_snapshot_and_chunk(
    store: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    snaps = SnapshotStore(store, blobs)
    run = new_run(store)
    good = snaps.save(make_checkpoint(tmp_path / "a", seed=1), run_id=run, seq=1)
    bad = snaps.save(make_checkpoint(tmp_path / "b", seed=2), run_id=run, seq=2)
    chunk = _chunk_only_in(snaps, bad, good)
    key = f"chunks/{chunk[:2]}/{chunk}"
    data = bytearray(blobs.get(key) or b"")
    data[len(data) // 2] ^= 0x01
    blobs.put(key, bytes(data))

    with pytest.raises(SnapshotCorruptError) as info:
        snaps.load(bad, tmp_path / "out")
    assert info.value.snapshot_id == bad and info.value.chunk == chunk
    assert bad in str(info.value) and chunk in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no partial dir
    snaps.load(good, tmp_path / "out")  # the earlier snapshot is intact

    blobs.delete(key)
    with pytest.raises(SnapshotCorruptError, match="missing"):
        snaps.load(bad, tmp_path / "out2")


def test_wrong_or_missing_key_is_a_clear_error_and_restores_nothing(
    store: Store, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    right = SnapshotKey.generate()
    run = new_run(store)
    sid = SnapshotStore(store, blobs, key=right).save(make_checkpoint(tmp_path / "ck"), run_id=run,
                                                      seq=1)  # fmt: skip
    for key, text in ((SnapshotKey.generate(), "fingerprint"), (None, "no key is configured")):
        with pytest.raises(SnapshotKeyError, match=text) as info:
            SnapshotStore(store, blobs, key=key).load(sid, tmp_path / "out")
        assert info.value.snapshot_id == sid and "TORPOR_SNAPSHOT_KEY" in str(info.value)
        assert not (tmp_path / "out").exists()
    SnapshotStore(store, blobs, key=right).load(sid, tmp_path / "out")


def test_key_from_environment(tmp_path: Path) -> None:
    material = os.urandom(32)
    by_hex = SnapshotKey.from_env({"TORPOR_SNAPSHOT_KEY": material.hex()})
    (tmp_path / "key").write_bytes(material)
    (tmp_path / "key").chmod(0o600)
    by_file = SnapshotKey.from_env({"TORPOR_SNAPSHOT_KEY_FILE": str(tmp_path / "key")})
    assert by_hex is not None and by_file is not None
    assert by_hex.fingerprint == by_file.fingerprint
    # Neither set: the machine's own key, generated under TORPOR_HOME; "none" opts out.
    home = tmp_path / "home"
    generated = SnapshotKey.from_env({"TORPOR_HOME": str(home)})
    assert generated is not None and (home / "snapshot.key").is_file()
    assert SnapshotKey.from_env({}, home=home).fingerprint == generated.fingerprint  # type: ignore[union-attr]
    assert SnapshotKey.from_env({"TORPOR_SNAPSHOT_KEY": "none"}, home=home) is None
    with pytest.raises(ConfigError, match="256-bit"):
        SnapshotKey.from_env({"TORPOR_SNAPSHOT_KEY": "too-short"})


def test_blob_urls(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(f"file://{tmp_path}/b"), LocalBlobStore)
    with pytest.raises(Exception, match="unknown scheme"):
        open_blob_store("ftp://x/y")


# -- atomic listing under SIGKILL ----------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import random, sys, time
    sys.path.insert(0, sys.argv[4])
    from pathlib import Path
    from test_snapshots import make_checkpoint
    from torpor.store import open_store
    from torpor.snapshots import LocalBlobStore, SnapshotStore
    db, blobs, run = sys.argv[1:4]
    work = Path(sys.argv[5])
    snaps = SnapshotStore(open_store(db), LocalBlobStore(blobs))
    rng = random.Random()
    snaps._phase_hook = lambda phase: time.sleep(rng.random() * 0.03)
    print("ready", flush=True)
    seq = 0
    while True:
        seq += 1
        src = work / f"ck-{seq}"
        make_checkpoint(src, seed=rng.randrange(1 << 30))
        snaps.save(src, run_id=run, seq=seq)
        print("saved", flush=True)
    """
)


def test_sigkill_mid_save_never_lists_an_incomplete_snapshot(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    snaps = SnapshotStore(store, blobs)
    run = new_run(store)
    rng = random.Random(5)
    for attempt in range(6):
        work = tmp_path / f"work-{attempt}"
        work.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, db_url, str(blobs.root), run,
             str(Path(__file__).parent), str(work)],
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        if attempt == 0:
            # At least one whole save to check, however slow a loaded machine makes saves;
            # the kill still lands at a random moment of a later one.
            assert proc.stdout.readline() == b"saved\n"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for record in snaps.list_snapshots(run):  # every listed snapshot is whole
            snaps.load(record, tmp_path / f"check-{record.id}")
            shutil.rmtree(tmp_path / f"check-{record.id}")
    listed = snaps.list_snapshots(run)
    assert listed, "no save ever completed"

    report = snaps.gc(temp_age=0)
    assert report.stale_pending >= 1 or report.deleted_chunks >= 0
    assert not list(blobs.list("pending/")) and not list(blobs.list("tmp/"))
    referenced = set()
    for record in listed:
        blob = blobs.get(f"manifests/{record.manifest}")
        assert blob is not None
        referenced |= {c.hex() for c in read_header(blob).refs}
    assert stored_chunk_keys(blobs) == referenced
    assert {i.key.rsplit("/", 1)[1] for i in blobs.list("manifests/")} == {
        r.manifest for r in listed
    }
    for record in listed:
        snaps.load(record, tmp_path / f"after-gc-{record.id}")


# -- delete, retention, gc -----------------------------------------------------------------


def test_delete_and_gc_free_only_unshared_chunks(
    store: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    snaps = SnapshotStore(store, blobs)
    run = new_run(store)
    a = snaps.save(make_checkpoint(tmp_path / "a", seed=1), run_id=run, seq=1)
    b = snaps.save(make_checkpoint(tmp_path / "b", seed=2), run_id=run, seq=2)
    before = stored_chunk_keys(blobs)
    assert snaps.get(a).id == a and store.get_snapshot(a) is not None
    snaps.delete(a)
    assert [r.id for r in snaps.list_snapshots(run)] == [b]
    assert store.get_snapshot(a) is None and [r.id for r in store.list_snapshots(run)] == [b]
    assert not store.delete_snapshot(a)  # already gone
    with pytest.raises(SnapshotNotFoundError):
        snaps.get(a)
    with pytest.raises(SnapshotNotFoundError):
        snaps.load(a, tmp_path / "gone")
    report = snaps.gc()
    assert report.deleted_chunks > 0 and report.deleted_manifests == 1
    assert stored_chunk_keys(blobs) < before
    assert tree_state(snaps.load(b, tmp_path / "out").directory) == tree_state(tmp_path / "b")

    snaps.delete_run(run)
    snaps.gc()
    assert not stored_chunk_keys(blobs) and not list(blobs.list("manifests/"))


def test_prune_keeps_last_n_and_unfinished_runs(store: Store, tmp_path: Path) -> None:
    snaps = SnapshotStore(store, LocalBlobStore(tmp_path / "blobs"), keep_last=2)
    finished = new_run(store)
    running = new_run(store)
    src = make_checkpoint(tmp_path / "ck")
    for seq in range(1, 5):
        snaps.save(src, run_id=finished, seq=seq)
        snaps.save(src, run_id=running, seq=seq)
    owned = store.claim_run("w1", 30, run_id=finished)
    assert owned is not None
    store.update_run(finished, owned.epoch, status=RunStatus.COMPLETED, release=True)

    deleted = snaps.prune()
    assert len(deleted) == 2
    assert [r.seq for r in snaps.list_snapshots(finished)] == [3, 4]
    assert len(snaps.list_snapshots(running)) == 4
    snaps.gc()
    snaps.load(snaps.list_snapshots(finished)[0], tmp_path / "out")
