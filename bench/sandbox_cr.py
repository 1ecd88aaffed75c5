"""Checkpoint and restore of a sandbox, beside bare CRIU on the same process, same machine.

Three workloads: a small Python agent (a thread and a `sleep` child), and processes holding
200 MB and 1 GB of random bytes. Each is checkpointed and restored as a torpor sandbox
(namespaces, overlay root, layer copies, the init process) and, in the same run, as a bare
process with plain `criu dump` / `criu restore`: the ratio is what the sandbox costs.
Also measured: launching a sandbox and forking one from a running sandbox's checkpoint.

usage: .venv/bin/python bench/sandbox_cr.py [--repeat R] [--sizes small,200,1024] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_spread, progress, rss_mb, save_results, write_section
from torpor import Settings
from torpor.sandbox import Sandbox, find_criu, process_start_time
from torpor.sandbox._host import become_subreaper

AGENT = """
import subprocess, sys, threading, time
child = subprocess.Popen(["sleep", "100000"])
threading.Thread(target=lambda: time.sleep(100000), daemon=True).start()
print("ready", flush=True)
time.sleep(100000)
"""
# The options torpor gives CRIU that have nothing to do with the sandbox (which adds --root,
# --external, --action-script and cgroup options): the bare runs use them too, so that the
# ratio is what the sandbox costs, not a difference in logging or socket handling.
_SAME_OPTIONS = ["--tcp-close", "--file-locks", "--network-lock", "skip", "-v4"]

HOLDER = """
import os, sys, time
data = os.urandom(int(sys.argv[1]) << 20)
print("ready", flush=True)
time.sleep(100000)
"""


def _program(size: str) -> list[str]:
    if size == "small":
        return ["python3", "-c", AGENT]
    return ["python3", "-c", HOLDER, size]


def _label(size: str) -> str:
    return "small agent + child" if size == "small" else f"{size} MB random"


def _wait_ready(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "ready" not in (path.read_text() if path.exists() else ""):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workload did not get ready: {path}")
        time.sleep(0.01)


def _tree_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20


def _sandbox_round(size: str, scratch: Path, settings: Settings) -> dict[str, float]:
    box = Sandbox.launch(_program(size), settings=settings)
    restored = None
    try:
        _wait_ready(box.stdout_path)
        assert box.pid is not None
        rss = rss_mb(box.pid)
        os.sync()  # start clean: the last round's dirty pages would be charged to this one
        checkpoint = box.checkpoint(scratch / "ck")
        restored = Sandbox.restore(checkpoint, settings=settings)
        if restored.poll() is not None:
            raise RuntimeError("the restored sandbox did not keep running")
        return {
            "launch": box.timings["launch"],
            "checkpoint": checkpoint.total_seconds,
            "restore": restored.timings["restore"],
            "criu_restore": restored.timings["criu_restore"],
            "image_mb": checkpoint.image_bytes / 2**20,
            "rss_mb": rss,
        }
    finally:
        for b in (restored, box):
            if b is not None:
                b.teardown()
        shutil.rmtree(scratch / "ck", ignore_errors=True)


def _fork_round(scratch: Path, settings: Settings) -> tuple[float, float]:
    """(checkpoint with leave_running, fork from it) in seconds."""
    box = Sandbox.launch(_program("small"), settings=settings)
    forked = None
    try:
        _wait_ready(box.stdout_path)
        os.sync()
        checkpoint = box.checkpoint(scratch / "ck", leave_running=True)
        forked = Sandbox.fork(checkpoint, settings=settings)
        return checkpoint.total_seconds, forked.timings["restore"]
    finally:
        for b in (forked, box):
            if b is not None:
                b.teardown()
        shutil.rmtree(scratch / "ck", ignore_errors=True)


def _bare_round(size: str, scratch: Path, criu: str) -> dict[str, float]:
    """The same process outside any sandbox, dumped and restored by plain CRIU."""
    images = scratch / "bare"
    images.mkdir()
    out = scratch / "bare.out"
    # A session leader with no inherited descriptors, as CRIU wants it; output to a file.
    with open(out, "w") as f:
        proc = subprocess.Popen(
            _program(size), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            close_fds=True, start_new_session=True,
        )  # fmt: skip
    restored = None
    try:
        _wait_ready(out)
        os.sync()
        started = time.perf_counter()
        subprocess.run(
            [criu, "dump", "-t", str(proc.pid), "-D", str(images), *_SAME_OPTIONS,
             "-o", "dump.log"], check=True, capture_output=True,
        )  # fmt: skip
        dump = time.perf_counter() - started
        proc.wait()  # the restore needs the pids free: reap the tree, orphans included
        _reap_all_children()
        started = time.perf_counter()
        subprocess.run(
            [criu, "restore", "-D", str(images), "-d", *_SAME_OPTIONS, "-o", "restore.log",
             "--pidfile", str(scratch / "bare.pid")], check=False, capture_output=True,
        )  # fmt: skip
        if not (scratch / "bare.pid").exists():
            errors = [x for x in (images / "restore.log").read_text().splitlines() if "Error" in x]
            raise RuntimeError(f"bare criu restore failed: {errors[-3:]}")
        restore = time.perf_counter() - started
        restored = int((scratch / "bare.pid").read_text())
        if process_start_time(restored) is None:
            raise RuntimeError("the bare restored process did not keep running")
        return {"dump": dump, "restore": restore, "image_mb": _tree_mb(images)}
    finally:
        proc.kill()
        proc.wait()
        (scratch / "bare.pid").unlink(missing_ok=True)
        if restored is not None:
            os.killpg(restored, 9)  # the whole restored group, its `sleep` child included
        _reap_all_children()
        shutil.rmtree(images, ignore_errors=True)
        out.unlink(missing_ok=True)


def _reap_all_children(timeout: float = 5.0) -> None:
    """Reap every child; as a subreaper we inherit the dumped tree's orphaned processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.005)


def _fmt(values: list[float], unit: float = 1000) -> str:
    med, lo, hi = median_spread(values)
    return f"{med * unit:.0f} ({lo * unit:.0f}-{hi * unit:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="small,200,1024")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    settings = Settings.from_env()
    criu = find_criu(settings)
    become_subreaper()  # restored trees (bare and sandboxed) become our children
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=settings.home))
    load_before = os.getloadavg()[0]
    rows = []
    measured: list[dict[str, object]] = []
    launches: list[float] = []
    try:
        for size in args.sizes.split(","):
            ours: list[dict[str, float]] = []
            bare: list[dict[str, float]] = []
            for i in range(args.repeat):
                progress(f"{_label(size)}: round {i + 1}/{args.repeat}")
                # Alternate who goes first: the second one pays for the first's dirty pages.
                if i % 2:
                    bare.append(_bare_round(size, scratch, criu.path))
                ours.append(_sandbox_round(size, scratch, settings))
                if not i % 2:
                    bare.append(_bare_round(size, scratch, criu.path))
            launches += [r["launch"] for r in ours]

            def col(rounds: list[dict[str, float]], key: str) -> list[float]:
                return [r[key] for r in rounds]

            ck, dump = col(ours, "checkpoint"), col(bare, "dump")
            rs, brs = col(ours, "restore"), col(bare, "restore")
            measured.append(
                {
                    "workload": _label(size),
                    "size": size,
                    "rss_mb": median_spread(col(ours, "rss_mb"))[0],
                    "torpor_image_mb": median_spread(col(ours, "image_mb"))[0],
                    "bare_image_mb": median_spread(col(bare, "image_mb"))[0],
                    "torpor_checkpoint_s": ck,
                    "bare_dump_s": dump,
                    "torpor_restore_s": rs,
                    "bare_restore_s": brs,
                }
            )
            rows.append(
                f"| {_label(size)} | {median_spread(col(ours, 'rss_mb'))[0]:.0f} "
                f"| {median_spread(col(ours, 'image_mb'))[0]:.1f} "
                f"| {median_spread(col(bare, 'image_mb'))[0]:.1f} "
                f"| {_fmt(ck)} | {_fmt(dump)} "
                f"| {median_spread(ck)[0] / median_spread(dump)[0]:.2f}x "
                f"| {_fmt(rs)} | {_fmt(brs)} "
                f"| {median_spread(rs)[0] / median_spread(brs)[0]:.2f}x |"
            )
        forks, running = [], []
        for i in range(args.repeat):
            progress(f"fork: round {i + 1}/{args.repeat}")
            ck_seconds, fork_seconds = _fork_round(scratch, settings)
            running.append(ck_seconds)
            forks.append(fork_seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    table = "\n".join(
        [
            "## Sandbox checkpoint and restore (`bench/sandbox_cr.py`)",
            "",
            f"{machine()}; CRIU {criu.version}; {args.repeat} rounds each; times in ms, "
            "median (min-max). *torpor* is `Sandbox.checkpoint()` / `Sandbox.restore()` "
            "end to end (inspection of the tree, namespaces, overlay root, the layers moved "
            "into the checkpoint and copied back out, the sandbox's init); *bare* is plain "
            "`criu dump` / `criu restore` of the same program run as an ordinary process, "
            f"with the options torpor passes that are not about the sandbox "
            f"(`{' '.join(_SAME_OPTIONS)}`). Images are raw (uncompressed) CRIU images. "
            f"Load average at start / end: {load} (other work on the machine shows in the "
            "spreads, most in the small agent's tens of milliseconds).",
            "",
            "| workload | RSS MB | torpor image MB | bare image MB | torpor checkpoint "
            "| bare dump | ratio | torpor restore | bare restore | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Launching a sandbox: {_fmt(launches)} ms. Forking the small agent from a "
            f"checkpoint of a running sandbox (copy its upper layer, mount, CRIU restore): "
            f"{_fmt(forks)} ms. Checkpointing the small agent with `leave_running=True` "
            f"(layers copied by CRIU's post-dump hook while frozen): {_fmt(running)} ms.",
        ]
    )
    print(table)
    if not args.no_write:
        save_results(
            "sandbox_cr",
            {
                "args": vars(args),
                "criu_version": str(criu.version),
                "workloads": measured,
                "launch_s": launches,
                "fork_s": forks,
                "checkpoint_leave_running_s": running,
            },
        )
        write_section("sandbox_cr", table)


if __name__ == "__main__":
    main()
