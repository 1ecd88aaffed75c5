"""The snapshot store against plain `tar | zstd` of the same checkpoint, on real sandboxes.

Workloads: a small Python agent that works in turns (its conversation grows in memory, it
writes a file), and processes holding 200 MB and 1 GB of partly compressible memory (a third
random, a third base64 text, a third sparse structures) that rewrite 1 MB of it per turn.
For each: the first snapshot's stored size and save time; the next snapshot's, after one
turn; restore-to-running from the store, normal (fetch + decompress into /dev/shm + CRIU
restore) and lazy (fetch all but the lazy pages + `criu restore --lazy-pages`, the memory
then streamed from the store), alternated in the same round, plus when the lazy restore's
pages were all in; a lazy restore from a local, complete checkpoint (the worker's own); and
the tar.zst baseline. Also: page chunk sizes compared on the small agent. Measurements go to
bench-results/snapshot_store.json as well.

usage: .venv/bin/python bench/snapshot_store.py [--sizes small,200,1024] [--repeat R]
       [--restores N] [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS as REPORT
from _common import machine, median_spread, progress, rss_mb, save_results, write_section
from torpor import Road, Settings
from torpor._model import SnapshotRecord
from torpor.sandbox import Checkpoint, Sandbox, find_criu
from torpor.snapshots import LocalBlobStore, SnapshotStore
from torpor.store import open_store

DOCS = REPORT.parent  # the plot goes beside the report

AGENT = """
import json, os, time
history = []
turn = 0
while True:
    turn += 1
    while not os.path.exists(f"/workspace/go-{turn}"):
        time.sleep(0.005)
    history.append({"role": "assistant", "turn": turn, "text": "thinking " * 200})
    with open("/workspace/notes.json", "w") as f:
        json.dump(history[-3:], f)
    print(turn, flush=True)
"""
HOLDER = """
import base64, os, random, sys, time
third = (int(sys.argv[1]) << 20) // 3
noise = bytearray(os.urandom(third))
text = bytearray(base64.b64encode(os.urandom(third * 3 // 4)))
sparse = bytearray(third)
sparse[::64] = os.urandom(len(sparse[::64]))
parts = [noise, text, sparse]
turn = 0
while True:
    turn += 1
    while not os.path.exists(f"/workspace/go-{turn}"):
        time.sleep(0.005)
    for _ in range(256):  # one turn rewrites 1 MB here and there
        part = random.choice(parts)
        at = random.randrange(0, len(part) - 4096)
        part[at : at + 4096] = os.urandom(4096)
    print(turn, flush=True)
"""


def _program(size: str) -> list[str]:
    return ["python3", "-c", AGENT] if size == "small" else ["python3", "-c", HOLDER, size]


def _label(size: str) -> str:
    return "small agent" if size == "small" else f"{size} MB process"


def _take_turn(box: Sandbox, n: int, timeout: float = 300) -> None:
    (box.workspace / f"go-{n}").touch()
    deadline = time.monotonic() + timeout
    while str(n) not in box.stdout_path.read_text().split():
        if time.monotonic() > deadline or box.poll() is not None:
            raise RuntimeError(f"turn {n} did not happen: {box.stdout_path.read_text()[-300:]}")
        time.sleep(0.005)


def _tar_zstd(directory: Path, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    subprocess.run(
        f"tar -C {directory} -cf - . | zstd -q -3 -o {out}", shell=True, check=True
    )  # fmt: skip
    return time.perf_counter() - started, out.stat().st_size


def _untar(archive: Path, into: Path) -> float:
    started = time.perf_counter()
    into.mkdir()
    subprocess.run(f"zstd -q -d -c {archive} | tar -C {into} -xf -", shell=True, check=True)
    return time.perf_counter() - started


def _restore_and_check(checkpoint: Checkpoint, settings: Settings, lazy: bool = False) -> float:
    started = time.perf_counter()
    box = Sandbox.restore(checkpoint, settings=settings, lazy=lazy)
    elapsed = time.perf_counter() - started
    try:
        box.wait_pages(600)
        if box.poll() is not None:
            raise RuntimeError("the restored sandbox did not keep running")
    finally:
        box.teardown()
    return elapsed


def _lazy_from_store(
    snaps: SnapshotStore, record: SnapshotRecord, into: Path, settings: Settings
) -> dict[str, float]:
    """Restore-to-running with lazy pages from the store, and when the pages were all in."""
    started = time.perf_counter()
    loaded = snaps.load(record, into, lazy=True)
    box = Sandbox.restore(loaded.checkpoint(), settings=settings, lazy=True, pages=loaded.pages)
    running = (time.perf_counter() - started) * 1000
    try:
        box.wait_pages(600)
        pages_in = (time.perf_counter() - started) * 1000
        if box.poll() is not None:
            raise RuntimeError("the lazily restored sandbox did not keep running")
    finally:
        box.teardown()
        shutil.rmtree(into)
    return {
        "lazy_fetch_ms": loaded.fetch_ms,
        "lazy_restore_ms": running - loaded.fetch_ms,
        "lazy_to_running_ms": running,
        "lazy_pages_in_ms": pages_in,
    }


def _store_restores(
    snaps: SnapshotStore, record: SnapshotRecord, shm: Path, settings: Settings, n: int
) -> dict[str, float]:
    """Normal and lazy restore-to-running from the store, alternated ``n`` times; medians.
    A lazy restore of the normally loaded (complete, local) directory rides along."""
    samples: dict[str, list[float]] = {}
    for i in range(n):
        loaded = snaps.load(record, shm / "from-store")
        normal = _restore_and_check(loaded.checkpoint(), settings) * 1000
        local = _restore_and_check(loaded.checkpoint(), settings, lazy=True) * 1000
        shutil.rmtree(shm / "from-store")
        one = {
            "fetch_ms": loaded.fetch_ms,
            "restore_ms": normal,
            "store_to_running_ms": loaded.fetch_ms + normal,
            "local_lazy_restore_ms": local,
            **_lazy_from_store(snaps, record, shm / f"lazy-{i}", settings),
        }
        for key, value in one.items():
            samples.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def _round(size: str, scratch: Path, settings: Settings, restores: int) -> dict[str, float]:
    store = open_store(f"sqlite://{scratch / 'torpor.db'}")
    snaps = SnapshotStore(store, LocalBlobStore(scratch / "blobs"))
    run = store.create_run("bench", road=Road.SNAPSHOT).id
    shm = Path(tempfile.mkdtemp(prefix="round-", dir=settings.home))
    box = Sandbox.launch(_program(size), settings=settings)
    out: dict[str, float] = {}
    try:
        _take_turn(box, 1)
        assert box.pid is not None
        out["rss_mb"] = rss_mb(box.pid)
        ck1 = box.checkpoint(shm / "ck1", leave_running=True)
        first = snaps.get(snaps.save(ck1, run_id=run, seq=1))
        out["raw_mb"] = first.raw_bytes / 1e6
        out["first_mb"] = first.stored_bytes / 1e6
        out["first_save_ms"] = first.store_ms
        out["dump_ms"] = first.dump_ms
        t, n = _tar_zstd(ck1.directory, scratch / "ck1.tar.zst")
        out["tar_first_mb"], out["tar_first_ms"] = n / 1e6, t * 1000
        _take_turn(box, 2)
        ck2 = box.checkpoint(shm / "ck2")  # stops it: restored below under its id
        second = snaps.get(snaps.save(ck2, run_id=run, seq=2))
        out["next_kb"] = second.stored_bytes / 1e3
        out["next_save_ms"] = second.store_ms
        out["next_new_chunks"] = second.new_chunks
        out["chunks"] = second.chunks
        t, n = _tar_zstd(ck2.directory, scratch / "ck2.tar.zst")
        out["tar_next_mb"], out["tar_next_ms"] = n / 1e6, t * 1000
        shutil.rmtree(ck1.directory)
        shutil.rmtree(ck2.directory)

        out.update(_store_restores(snaps, second, shm, settings, restores))
        out["tar_fetch_ms"] = _untar(scratch / "ck2.tar.zst", shm / "from-tar") * 1000
        tar_restore = _restore_and_check(Checkpoint.load(shm / "from-tar"), settings) * 1000
        out["tar_to_running_ms"] = out["tar_fetch_ms"] + tar_restore
    finally:
        box.teardown()
        store.close()
        shutil.rmtree(shm, ignore_errors=True)
        for name in ("blobs", "ck1.tar.zst", "ck2.tar.zst"):
            path = scratch / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return out


def _windows(scratch: Path, settings: Settings) -> list[tuple[int, float, float, int]]:
    """The small agent's first and next snapshot under fixed page windows."""
    box = Sandbox.launch(_program("small"), settings=settings)
    try:
        _take_turn(box, 1)
        ck1 = box.checkpoint(settings.home / "w1", leave_running=True)
        _take_turn(box, 2)
        ck2 = box.checkpoint(settings.home / "w2", leave_running=True)
    finally:
        box.teardown()
    rows = []
    for window in (4096, 16384, 65536):
        store = open_store(f"sqlite://{scratch / f'w{window}.db'}")
        snaps = SnapshotStore(store, LocalBlobStore(scratch / f"wb{window}"), page_window=window)
        run = store.create_run("bench", road=Road.SNAPSHOT).id
        a = snaps.get(snaps.save(ck1, run_id=run, seq=1))
        b = snaps.get(snaps.save(ck2, run_id=run, seq=2))
        rows.append((window, a.stored_bytes / 1e6, b.stored_bytes / 1e3, b.chunks))
        store.close()
        shutil.rmtree(scratch / f"wb{window}")
    shutil.rmtree(ck1.directory)
    shutil.rmtree(ck2.directory)
    return rows


def _fmt(values: list[float], digits: int = 0) -> str:
    med, lo, hi = median_spread(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def _plot(results: dict[str, list[dict[str, float]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is not installed: no plot")
        return False
    sizes = list(results)
    rss = [median_spread([r["rss_mb"] for r in results[s]])[0] for s in sizes]

    def med(key: str, scale: float = 1.0) -> list[float]:
        return [median_spread([r[key] for r in results[s]])[0] * scale for s in sizes]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.loglog(rss, med("first_mb"), "o-", label="first snapshot (store)")
    left.loglog(rss, med("next_kb", 1e-3), "o-", label="next snapshot (store)")
    left.loglog(rss, med("tar_first_mb"), "s--", label="tar | zstd -3 (every snapshot)")
    left.set_xlabel("resident memory (MB)")
    left.set_ylabel("stored MB")
    left.set_title("stored size per snapshot")
    left.legend(fontsize=8)
    right.loglog(rss, med("first_save_ms"), "o-", label="save, first")
    right.loglog(rss, med("next_save_ms"), "o-", label="save, next")
    right.loglog(rss, med("tar_next_ms"), "s--", label="tar | zstd -3")
    right.loglog(rss, med("store_to_running_ms"), "^-", label="restore to running (store)")
    right.loglog(rss, med("tar_to_running_ms"), "v--", label="restore to running (tar.zst)")
    right.set_xlabel("resident memory (MB)")
    right.set_ylabel("ms")
    right.set_title("time")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="small,200,1024")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--restores", type=int, default=3, help="restores per round (medians)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    base = Settings.from_env()
    criu = find_criu(base)
    results: dict[str, list[dict[str, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="torpor-bench-", dir="/var/tmp") as tmp,
        tempfile.TemporaryDirectory(prefix="torpor-bench-home-", dir="/dev/shm") as home,
    ):
        scratch = Path(tmp)
        # Sandboxes, checkpoints and loaded snapshots live in memory (/dev/shm, where a worker
        # would dump and restore); the blob store and the tar.zst archives on disk.
        settings = Settings(home=Path(home), database_url=base.database_url, blob_url=base.blob_url)
        windows = _windows(scratch, settings)
        for size in args.sizes.split(","):
            repeat = args.repeat if size == "small" else max(1, args.repeat // 2)
            if size == "1024":
                repeat = 1
            for i in range(repeat):
                progress(f"{_label(size)}: round {i + 1}/{repeat}")
                results.setdefault(size, []).append(_round(size, scratch, settings, args.restores))
    lines = [
        f"Machine: {machine()}; CRIU {criu.version}; blob store: a local directory (ext4); "
        "zstd level 3; medians (min-max) of the rounds. *Next* is the snapshot after one "
        "agent turn (the small agent appends to its conversation and writes a file; the big "
        "processes rewrite 1 MB of their memory). Store → running = fetch and decompress "
        "into /dev/shm + `Sandbox.restore` (CRIU, normal); lazy variants in the next table.",
        "",
        "| workload | RSS MB | raw MB | first stored MB | tar\\|zstd MB | next stored kB "
        "| next new/all chunks | save first ms | save next ms | tar\\|zstd ms "
        "| store → running ms | tar.zst → running ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, rounds in results.items():

        def col(key: str, digits: int = 0, rounds: list[dict[str, float]] = rounds) -> str:
            return _fmt([r[key] for r in rounds], digits)

        lines.append(
            f"| {_label(size)} | {col('rss_mb')} | {col('raw_mb', 1)} | {col('first_mb', 2)} "
            f"| {col('tar_first_mb', 2)} | {col('next_kb')} "
            f"| {col('next_new_chunks')}/{col('chunks')} | {col('first_save_ms')} "
            f"| {col('next_save_ms')} | {col('tar_next_ms')} | {col('store_to_running_ms')} "
            f"| {col('tar_to_running_ms')} |"
        )
    lines += [
        "",
        f"Restore to running, normal against lazy, alternated {args.restores}x per round "
        "(medians of the rounds' medians). *Lazy from the store*: load all but the lazy pages "
        "(`SnapshotStore.load(lazy=True)`) + `criu restore --lazy-pages`, the memory then "
        "streamed from the store by torpor's page server; *pages in*: until the last page "
        "was copied. *Lazy, local*: `Sandbox.restore(lazy=True)` of a complete checkpoint "
        "already in /dev/shm (a worker waking its own recent checkpoint).",
        "",
        "| workload | normal: store → running ms | lazy: store → running ms (fetch + restore) "
        "| normal ÷ lazy | lazy: pages in ms | normal restore from /dev/shm ms "
        "| lazy restore from /dev/shm ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, rounds in results.items():

        def med(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        lines.append(
            f"| {_label(size)} | {med('store_to_running_ms'):.0f} "
            f"| {med('lazy_to_running_ms'):.0f} ({med('lazy_fetch_ms'):.0f} + "
            f"{med('lazy_restore_ms'):.0f}) "
            f"| {med('store_to_running_ms') / med('lazy_to_running_ms'):.1f}x "
            f"| {med('lazy_pages_in_ms'):.0f} | {med('restore_ms'):.0f} "
            f"| {med('local_lazy_restore_ms'):.0f} |"
        )
    lines += [
        "",
        "Restore to running, split: fetch+verify+write into /dev/shm ms / CRIU restore ms: "
        + "; ".join(
            f"{_label(s)} {_fmt([r['fetch_ms'] for r in rs])} / "
            f"{_fmt([r['restore_ms'] for r in rs])}"
            for s, rs in results.items()
        ),
        "",
        "Page chunking on the small agent (one run of each, same two checkpoints):",
        "",
        "| page window | first stored MB | next stored kB | chunks |",
        "|---|---|---|---|",
        *(f"| {w // 1024} KiB | {a:.2f} | {b:.0f} | {c} |" for w, a, b, c in windows),
    ]
    if _plot(results, DOCS / "snapshot_store.png"):
        lines += [
            "",
            "![snapshot store: size and time against resident memory](snapshot_store.png)",
        ]
    text = "## Snapshot store (`bench/snapshot_store.py`)\n\n" + "\n".join(lines)
    print(text)
    if not args.no_write:
        save_results(
            "snapshot_store",
            {
                "args": vars(args),
                "criu_version": str(criu.version),
                "rounds": results,
                "windows": [
                    dict(zip(("window", "first_mb", "next_kb", "chunks"), w, strict=True))
                    for w in windows
                ],
            },
        )
        write_section("snapshot_store", text)


if __name__ == "__main__":
    main()
