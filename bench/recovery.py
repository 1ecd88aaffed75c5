"""Recovery after a crash, suspend and wake, and the memory of waiting runs, on both roads.

1. Recovery. A scripted agent (`torpor.Agent`, one cheap typed tool `add`, the scripted
   model server answering with a pure function of the conversation, reached through the
   Anthropic SDK: the OpenAI SDK's request transform costs ~0.6 ms per message, ~0.66 s a
   call at 1,000 turns) runs in a `torpor worker --lease L` subprocess. One run per road
   grows through the turn counts; at each it is crashed --repeat times: when its log holds
   N model calls the active worker's process group is SIGKILLed and an idle standby worker
   (SDKs, sandbox and snapshot modules and this file imported, one model call made) takes
   it over; a new standby replaces it. We measure
   - *recovery*: from the new worker's claim (exact: the claim sets
     `lease_expires_at = now + L`, read before the first renewal) to the first new
     `model_call` / `tool_result` entry after the crash point ("making progress again").
     Replay road: load + re-execution of the journal from the top. Snapshot road: orphan
     clean-up + fetch + CRIU restore of the newest snapshot + the log-tail replay;
   - *kill → progress*: wall time from the SIGKILL to that entry, which adds the lease
     expiry (a setting) and the idle worker's claim polling.
   --cold-turns N adds runs crashed at N turns whose new worker is a fresh process started
   at the kill. The snapshot road's workers checkpoint by `TORPOR_CHECKPOINT_POLICY`
   (--policy, default `interval:2`), so a snapshot about 2 s old at most exists at a kill.
2. Suspend and wake. A snapshot-road workflow waits for an event: `wait` entry → `suspended`
   entry (stop, dump, store, release), and `torpor.send` → `event` entry (claim poll,
   fetch, restore, the process looks again).
3. Memory. Runs waiting for an event: --suspended N suspended on the snapshot road (no
   sandbox left: the worker tree's memory + the snapshots' bytes on disk) against live
   waiting: --threads N replay-road runs holding a thread each in one worker
   (`--park-after` huge), and --processes M Python processes, each running one replay-road
   run that blocks in `wait_for_event` (scaled to 1,000 runs in the table).

Everything runs under a fresh TORPOR_HOME (a temporary directory) with the default SQLite
store; CRIU is taken from the usual place (`find_criu` before the switch) via TORPOR_CRIU.

usage: .venv/bin/python bench/recovery.py [--quick] [--turns 10,100,1000] [--repeat 3]
       [--lease 2] [--policy interval:2] [--cold-turns 10] [--suspended 100]
       [--threads 1000] [--processes 100] [--only recovery,suspend,suspended,threads,processes]
       [--merge] [--raw FILE] [--report-only] [--no-write]

At the defaults it takes ~14 minutes on 2 cores; --quick measures 10 and 100 turns twice,
50 suspended runs, 200 threads and 20 processes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torpor
from _common import DOCS, format_ms, machine, median_spread, progress, save_results, write_section

# torpor.testing is imported where it is used: workers and sandboxes import this file, and
# a cold worker's recovery would pay for it.
if TYPE_CHECKING:
    from torpor.testing import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
PLOT = DOCS.parent / "recovery.png"
EXTRA_TURNS = 3  # the agent goes on this many turns past the crash point, then answers


# -- the workload (imported by workers and sandboxes from this file) ----------------------


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


@torpor.workflow(name="bench.recovery.wait_for_go")
def wait_for_go(tag: str) -> str:
    payload = torpor.wait_for_event("go")
    return f"{tag}: {payload}"


def _script(request: Any) -> Any:
    """Call `add` until the task's target of tool results exists, then answer (pure)."""
    from torpor.testing import reply_text, reply_tool_calls

    first = next((i for i in request.items if type(i).__name__ == "UserText"), None)
    found = re.search(r"target=(\d+)", getattr(first, "text", "") or "")
    target = int(found.group(1)) if found else 1
    done = len(request.tool_results)
    if done < target:
        return reply_tool_calls([("add", {"a": done, "b": 1})], ids=[f"call-{done}"])
    return reply_text(f"done: {done} additions")


def _warm_up_model_calls() -> None:
    """In a standby worker (``--import`` of this file with TORPOR_BENCH_WARMUP=1): make one
    model call through torpor's provider, so the SDK's lazy set-up (client, request and
    response types) is done before the worker takes a run over, as in a long-lived worker."""
    from torpor.agent._providers import Provider, non_retryable_errors
    from torpor.agent._tools import Tool
    from torpor.testing import ScriptedModelServer

    non_retryable_errors()
    with ScriptedModelServer(_script) as server:
        provider = Provider("anthropic", "warm-up", server.anthropic_base_url, max_tokens=64)
        items = [{"type": "user", "text": "target=1"}]
        provider.complete("warm-up", items, [Tool.from_function(add).spec()])


if __name__ != "__main__" and os.environ.get("TORPOR_BENCH_WARMUP") == "1":
    _warm_up_model_calls()


# -- processes ----------------------------------------------------------------------------


class Env:
    """The fresh TORPOR_HOME and the environment of the worker processes."""

    def __init__(self, lease: float) -> None:
        from torpor._config import Settings
        from torpor.sandbox import find_criu
        from torpor.testing import WorkerGroup

        self.criu: str | None
        try:
            self.criu = os.environ.get("TORPOR_CRIU") or str(find_criu(Settings.from_env()).path)
        except Exception as exc:  # the snapshot road is then skipped
            self.criu = None
            self.criu_error = str(exc)
        self.home = Path(tempfile.mkdtemp(prefix="torpor-bench-recovery-"))
        os.environ["TORPOR_HOME"] = str(self.home)
        os.environ.pop("TORPOR_DATABASE_URL", None)
        os.environ.pop("TORPOR_BLOB_URL", None)
        if self.criu:
            os.environ["TORPOR_CRIU"] = self.criu
        os.environ.setdefault("ANTHROPIC_API_KEY", "bench-key-for-the-scripted-server")
        self.lease = lease
        # In sessions of their own: a kill ends the commands their runs started too.
        self.workers = WorkerGroup(
            env=os.environ, logs=self.home / "logs", own_session=True, cwd=ROOT
        )
        self.others: list[subprocess.Popen[bytes]] = []

    def worker(
        self, *, policy: str | None = None, concurrency: int = 1, park_after: float = 30.0,
        extra_env: dict[str, str] | None = None, imports: list[str] | None = None,
        warm_up: bool = False, lease: float | None = None,
    ) -> WorkerProcess:  # fmt: skip
        env = dict(extra_env or {})
        if policy:
            env["TORPOR_CHECKPOINT_POLICY"] = policy
        if warm_up:
            env["TORPOR_BENCH_WARMUP"] = "1"
        args = ["--lease", str(lease or self.lease), "--park-after", str(park_after),
                "--concurrency", str(concurrency)]  # fmt: skip
        for item in imports or []:
            args += ["--import", item]
        return self.workers.start(*args, **env)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for proc in self.others:
            _kill_group(proc)
        self.others.clear()
        # Sandboxes of killed workers: kill their trees and unmount before deleting.
        with contextlib.suppress(Exception):
            from torpor.sandbox import find_orphans, remove_orphans

            remove_orphans(find_orphans())
        if os.environ.get("BENCH_KEEP_HOME"):
            progress(f"kept {self.home}")
        else:
            shutil.rmtree(self.home, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started in a session of its own, with its group, and wait for it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Tail:
    """The log of one run, read incrementally."""

    def __init__(self, store: Any, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.entries: list[Any] = []
        self.model_calls = 0

    def poll(self) -> list[Any]:
        after = self.entries[-1].seq if self.entries else 0
        new: list[Any] = self.store.read(self.run_id, after=after)
        self.entries += new
        self.model_calls += sum(1 for e in new if e.kind == "model_call")
        return new

    def first(self, kinds: tuple[str, ...], after_seq: int = 0) -> Any:
        return next((e for e in self.entries if e.seq > after_seq and e.kind in kinds), None)


# -- 1. recovery --------------------------------------------------------------------------


@dataclass
class Trial:
    road: str
    turns: int
    turns_at_crash: int = 0
    crash_seq: int = 0
    work_s: float = 0.0  # claim -> progress
    wall_s: float = 0.0  # kill -> progress
    takeover_s: float = 0.0  # claim -> recovered/restored entry
    turn_s: float = 0.0  # median time of one turn before the crash
    snapshot_seq: int | None = None
    snapshots: int = 0
    fetch_ms: float | None = None
    restore_ms: float | None = None
    paid_twice: int = 0
    ok: bool = False
    note: str = ""
    cold: bool = False


THIS_FILE = str(Path(__file__).resolve())
WARM_IMPORTS = ["openai", "anthropic", "torpor.sandbox", "torpor.snapshots", THIS_FILE]


def _warm(worker: WorkerProcess, timeout: float = 60.0) -> None:
    """Wait until a worker has imported everything and started claiming."""
    from torpor.testing import wait_until

    wait_until(lambda: worker.poll() is not None or "worker w-" in worker.log(),
               "a standby worker to start", timeout=timeout)  # fmt: skip
    if worker.poll() is not None:
        raise RuntimeError(f"a worker exited ({worker.returncode}); see {worker.log_path}")


def recovery_series(
    env: Env, store: Any, road: str, points: list[int], repeat: int, policy: str, cold: bool
) -> list[Trial]:
    """One run of the scripted agent, crashed ``repeat`` times at each of ``points`` turns.

    Warm (default): every worker is started with the SDKs, torpor's sandbox and snapshot
    modules and this file imported (`--import`, done before it claims anything); three idle
    standby workers wait while the active one works, one of them takes the run over after
    the kill, and a new standby replaces it. Cold: the new worker is a fresh process without
    those imports, started at the kill.
    """
    from torpor.testing import ScriptedModelServer, wait_until

    trials: list[Trial] = []
    target = max(points) + 3 * repeat + EXTRA_TURNS
    wpolicy = policy if road == "snapshot" else None
    imports = None if cold else WARM_IMPORTS
    standby: list[WorkerProcess] = []
    if not cold:
        standby = [env.worker(policy=wpolicy, imports=imports, warm_up=not cold) for _ in range(4)]
        for proc in standby:
            _warm(proc)
    with ScriptedModelServer(_script) as server:
        agent = torpor.Agent(
            "anthropic:scripted-adder",
            tools=[add],
            system="Add one at a time.",
            max_turns=target + 10,
            base_url=server.anthropic_base_url,
        )
        handle = torpor.start(agent.run, f"Count up with add. target={target}", road=road,
                              detach=True)  # fmt: skip
        tail = Tail(store, handle.id)
        if cold:
            standby = [env.worker(policy=wpolicy)]
        first = wait_until(lambda: store.get_run(handle.id).lease_owner, "the first claim")
        worker = _owner(standby, first)
        standby.remove(worker)
        last_kill_turns = 0
        try:
            for n in points:
                for rep in range(repeat):
                    want = max(n, last_kill_turns + 2)
                    budget = 120 + want * (0.5 if road == "snapshot" else 0.3)

                    def reached(worker: WorkerProcess = worker, want: int = want) -> bool:
                        if worker.poll() is not None:
                            raise RuntimeError(f"the worker exited ({worker.returncode}); "
                                               f"see {worker.log_path}")  # fmt: skip
                        tail.poll()
                        return tail.model_calls >= want

                    wait_until(reached, f"{road} run {handle.id} to reach {want} turns",
                               timeout=budget, interval=0.01,
                               explain=lambda: f"{tail.model_calls} turns")  # fmt: skip
                    if cold:
                        standby = []
                    trial = _crash(env, store, handle.id, tail, road, n, worker, standby, wpolicy)
                    trial.cold = cold
                    trials.append(trial)
                    last_kill_turns = trial.turns_at_crash
                    worker = trial.worker  # type: ignore[attr-defined]
                    if worker in standby:
                        standby.remove(worker)
                    if not cold:
                        standby.append(
                            env.worker(policy=wpolicy, imports=imports, warm_up=not cold)
                        )
                    progress(
                        f"recovery {road} {n} turns {'cold' if cold else 'warm'} rep {rep + 1}: "
                        f"crash at {trial.turns_at_crash} turns (seq {trial.crash_seq}, "
                        f"snapshot seq {trial.snapshot_seq}), recovery {trial.work_s * 1e3:.0f} "
                        f"ms (takeover {trial.takeover_s * 1e3:.0f} ms), kill→progress "
                        f"{trial.wall_s:.2f} s, turn {trial.turn_s * 1e3:.1f} ms {trial.note}"
                    )
            try:
                answer = handle.result(timeout=300)
                ok = str(answer).startswith("done:")
                note = "" if ok else f"answer {answer!r}"
            except Exception as exc:
                ok, note = False, f"run ended badly: {exc}"
            tail.poll()
            recorded = sum(1 for e in tail.entries if e.kind == "model_call")
            for trial in trials:
                trial.ok = ok
                if note:
                    trial.note = (trial.note + "; " if trial.note else "") + note
            # Paid twice, per crash: the script answers by the conversation, so a request's
            # number of tool results is its turn; the one call a crash may pay twice is
            # the one in flight at the kill, turn `turns_at_crash` (a different turn for
            # every crash of the run).
            sent = collections.Counter(len(r.tool_results) for r in server.calls)
            for trial in trials:
                trial.paid_twice = max(0, sent[trial.turns_at_crash] - 1)
            other = server.call_count - recorded - sum(t.paid_twice for t in trials)
            if other:  # a call repeated that was not in flight at a kill: a bug to report
                trials[-1].note = (trials[-1].note + "; " if trials[-1].note else "") + (
                    f"{other} repeated model requests not in flight at a kill"
                )
        finally:
            for proc in [worker, *standby]:
                proc.stop()
    return trials


def _owner(procs: list[WorkerProcess], worker_id: str) -> WorkerProcess:
    """The worker process whose id (w-HOST-PID-HEX) is ``worker_id``."""
    pid = int(worker_id.rsplit("-", 2)[1])
    for proc in procs:
        if proc.pid == pid:
            return proc
    raise RuntimeError(f"{worker_id} is none of the workers started here")


def _crash(
    env: Env, store: Any, run_id: str, tail: Tail, road: str, n: int,
    worker: WorkerProcess, standby: list[WorkerProcess], wpolicy: str | None,
) -> Trial:  # fmt: skip
    from torpor.testing import wait_until

    trial = Trial(road, n)
    old = store.get_run(run_id)
    killed = time.time()
    worker.kill()
    tail.poll()
    trial.turns_at_crash = tail.model_calls
    trial.crash_seq = tail.entries[-1].seq
    gaps, prev = [], None
    for e in tail.entries:  # gaps between model calls, not across a takeover
        if e.kind in ("restored", "recovered"):
            prev = None
        elif e.kind == "model_call":
            if prev is not None:
                gaps.append(e.created_at - prev)
            prev = e.created_at
    gaps = sorted(gaps[-20:])
    trial.turn_s = gaps[len(gaps) // 2] if gaps else 0.0
    if road == "snapshot":
        snaps = store.list_snapshots(run_id)
        trial.snapshots = len(snaps)
        trial.snapshot_seq = max((s.seq for s in snaps), default=None)
    if not standby:
        standby.append(env.worker(policy=wpolicy))  # cold: a fresh process, at the kill

    def claimed() -> Any:
        rec = store.get_run(run_id)
        return rec if rec.epoch > old.epoch else None

    rec = wait_until(claimed, "the new worker's claim", timeout=env.lease * 3 + 60, interval=0.005)
    seen = time.time()
    trial.worker = _owner(standby, rec.lease_owner)  # type: ignore[attr-defined]
    claim_at = (rec.lease_expires_at or seen) - env.lease
    if seen - claim_at > env.lease / 3:
        trial.note = "claim seen late (after a renewal?)"

    def moved() -> Any:
        tail.poll()
        return tail.first(("model_call", "tool_result"), trial.crash_seq)

    first = wait_until(moved, "progress after the crash", timeout=300, interval=0.01)
    taken = tail.first(("restored" if road == "snapshot" else "recovered",), trial.crash_seq)
    trial.work_s = first.created_at - claim_at
    trial.wall_s = first.created_at - killed
    if taken is not None:
        trial.takeover_s = taken.created_at - claim_at
        if road == "snapshot":
            trial.fetch_ms = taken.payload.get("fetch_ms")
            trial.restore_ms = taken.payload.get("restore_ms")
            trial.snapshot_seq = taken.payload.get("seq", trial.snapshot_seq)
    elif road == "snapshot":
        trial.note = (trial.note + "; " if trial.note else "") + "no restore (fresh sandbox)"
    return trial


# -- 2. suspend and wake ------------------------------------------------------------------


def suspend_wake(env: Env, store: Any, repeat: int) -> list[dict[str, float]]:
    from torpor.testing import wait_until

    rows = []
    worker = env.worker()
    try:
        for i in range(repeat):
            handle = torpor.start(wait_for_go, f"sw{i}", road="snapshot", detach=True)
            tail = Tail(store, handle.id)

            def suspended(tail: Tail = tail) -> Any:
                tail.poll()
                return tail.first(("suspended",))

            susp = wait_until(suspended, "the run to be suspended", timeout=120, interval=0.01)
            wait = tail.first(("wait",))
            time.sleep(0.5)  # a quiet moment: the worker polls for claims again
            epoch = store.get_run(handle.id).epoch
            sent = time.time()
            torpor.send(handle.id, "go", {"n": i})

            def claimed(run_id: str = handle.id, epoch: int = epoch) -> Any:
                rec = store.get_run(run_id)
                return rec if rec.epoch > epoch else None

            rec = wait_until(claimed, "the claim of the woken run", timeout=60, interval=0.005)
            claim_at = (rec.lease_expires_at or time.time()) - env.lease

            def evented(tail: Tail = tail) -> Any:
                tail.poll()
                return tail.first(("event",))

            ev = wait_until(evented, "the event to be consumed", timeout=120, interval=0.005)
            restored = tail.first(("restored",))
            handle.result(timeout=60)
            row = {
                "suspend_s": susp.created_at - wait.created_at,
                "wake_s": ev.created_at - sent,
                "dump_ms": float(susp.payload.get("dump_ms") or 0),
                "claim_s": claim_at - sent,
                "restore_s": (restored.created_at - claim_at) if restored else float("nan"),
                "look_s": (ev.created_at - restored.created_at) if restored else float("nan"),
            }
            if restored:
                row["fetch_ms"] = float(restored.payload.get("fetch_ms") or 0)
                row["criu_ms"] = float(restored.payload.get("restore_ms") or 0)
            rows.append(row)
            progress(f"suspend/wake {i + 1}/{repeat}: suspend {row['suspend_s'] * 1e3:.0f} ms, "
                     f"wake {row['wake_s'] * 1e3:.0f} ms")  # fmt: skip
    finally:
        worker.stop()
    return rows


# -- 3. memory ----------------------------------------------------------------------------


def _mem(pids: list[int]) -> tuple[int, int]:
    """Resident and proportional set sizes (bytes) summed over these processes."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _count_status(store: Any, ids: list[str], status: str) -> int:
    from torpor._model import RunStatus

    wanted = set(ids)
    return sum(1 for r in store.list_runs(statuses=[RunStatus(status)]) if r.id in wanted)


def memory_suspended(env: Env, store: Any, n: int, concurrency: int) -> dict[str, Any]:
    from torpor.testing import process_tree

    blobs = env.home / "blobs"
    blobs_before = _du(blobs)
    # This file imported up front: see memory_threads.
    worker = env.worker(concurrency=concurrency, imports=[THIS_FILE])
    _warm(worker)
    idle_rss, idle_pss = _mem(process_tree(worker.pid))
    t0 = time.monotonic()
    ids = [torpor.start(wait_for_go, f"m{i}", road="snapshot", detach=True).id for i in range(n)]
    done = 0
    samples: list[tuple[int, int]] = []
    while done < n:
        time.sleep(2)
        done = _count_status(store, ids, "suspended")
        rss_now = _mem(process_tree(worker.pid))[0]
        samples.append((done, rss_now))
        progress(f"memory (snapshot road): {done}/{n} suspended, worker tree RSS "
                 f"{rss_now / 1e6:.0f} MB, {time.monotonic() - t0:.0f} s")  # fmt: skip
        if time.monotonic() - t0 > 60 + n * 6 or worker.poll() is not None:
            break
    elapsed = time.monotonic() - t0
    time.sleep(1)
    pids = process_tree(worker.pid)
    rss, pss = _mem(pids)
    sandboxes = [p for p in (env.home / "sandboxes").glob("*") if p.is_dir()]
    snaps = [s for i in ids for s in store.list_snapshots(i)]
    result = {
        "n": n,
        "suspended": done,
        "seconds": elapsed,
        "worker_rss": rss,
        "worker_pss": pss,
        "idle_rss": idle_rss,
        "idle_pss": idle_pss,
        "processes": len(pids),
        "sandboxes_left": len(sandboxes),
        "stored_bytes": sum(s.stored_bytes for s in snaps),
        "raw_bytes": sum(s.raw_bytes for s in snaps),
        "blob_disk": _du(blobs) - blobs_before,
        "snapshots": len(snaps),
        "db_bytes": sum(p.stat().st_size for p in env.home.glob("torpor.db*")),
    }
    result["rss_samples"] = samples
    recs = [s for i in ids for s in store.list_snapshots(i)]
    result["store_ms"] = [r.store_ms for r in recs]
    result["chunks"] = sum(r.chunks for r in recs)
    result["new_chunks"] = sum(r.new_chunks for r in recs)
    # Cancelled, not woken: a suspended run is idle, so that ends it at once, no restore.
    for i in ids:
        with contextlib.suppress(Exception):
            torpor.cancel(i)
    worker.stop()
    return result


def memory_threads(env: Env, store: Any, n: int) -> dict[str, Any]:
    from torpor.testing import process_tree

    # This file imported before claiming: threads loading a workflow's file at once race
    # (a run can fail with WorkflowNotFoundError while another thread executes the file).
    # The default 30 s lease: the heartbeat renews one run per transaction, and 1,000 runs
    # do not get renewed within a third of a 2 s lease (the worker then claims its own runs
    # again and the first thread of each is fenced).
    worker = env.worker(concurrency=n, park_after=1e9, imports=[THIS_FILE], lease=30.0)
    _warm(worker)
    idle_rss, idle_pss = _mem(process_tree(worker.pid))
    ids = [torpor.start(wait_for_go, f"t{i}", detach=True).id for i in range(n)]
    t0 = time.monotonic()
    while (w := _count_status(store, ids, "waiting")) < n and time.monotonic() - t0 < 120:
        progress(f"memory (live threads): {w}/{n} waiting")
        time.sleep(2)
    time.sleep(2)
    rss, pss = _mem(process_tree(worker.pid))
    with open(f"/proc/{worker.pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    result = {"n": n, "waiting": _count_status(store, ids, "waiting"), "rss": rss, "pss": pss,
              "idle_rss": idle_rss, "idle_pss": idle_pss, "threads": threads}  # fmt: skip
    for i in ids:
        torpor.send(i, "go", "bye")
    t1 = time.monotonic()
    while _count_status(store, ids, "completed") < n and time.monotonic() - t1 < 120:
        time.sleep(1)
    result["completed"] = _count_status(store, ids, "completed")
    worker.stop()
    return result


_PROCESS = """
import sys, torpor
sys.path.insert(0, {bench!r})
from recovery import wait_for_go
run = torpor.start(wait_for_go, sys.argv[1])     # executes here: this process waits
print(run.result(timeout=600))
"""


def memory_processes(env: Env, store: Any, m: int) -> dict[str, Any]:
    from torpor.testing import process_tree

    code = _PROCESS.format(bench=str(Path(__file__).resolve().parent))
    procs = []
    for i in range(m):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, f"p{i}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    env.others += procs
    t0 = time.monotonic()

    ids: list[str] = []
    while time.monotonic() - t0 < 120 + m:
        runs = [r for r in store.list_runs() if r.workflow == "bench.recovery.wait_for_go"
                and r.status.value == "waiting" and str(r.input).find("'p") >= 0]  # fmt: skip
        ids = [r.id for r in runs]
        progress(f"memory (live processes): {len(ids)}/{m} waiting")
        if len(ids) >= m:
            break
        time.sleep(2)
    time.sleep(2)
    pids = [p for proc in procs for p in process_tree(proc.pid)]
    rss, pss = _mem(pids)
    result = {"m": m, "waiting": len(ids), "rss": rss, "pss": pss, "processes": len(pids)}
    for run_id in ids:
        torpor.send(run_id, "go", "bye")
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
    return result


# -- the report ---------------------------------------------------------------------------


def _s(values: list[float]) -> str:
    if not values:
        return "—"
    med, lo, hi = median_spread(values)
    return f"{med:.2f} ({lo:.2f}–{hi:.2f})"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _kb(n: float) -> str:
    return f"{n / 1e3:,.1f} kB"


def plot(trials: list[Trial], turns: list[int]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"replay": ("tab:orange", "o"), "snapshot": ("tab:blue", "s")}
    for road, (color, marker) in styles.items():
        xs, meds, lo, hi = [], [], [], []
        for n in turns:
            vals = [t.work_s * 1000 for t in trials
                    if t.road == road and t.turns == n and not t.cold]  # fmt: skip
            if not vals:
                continue
            med, mn, mx = median_spread(vals)
            xs.append(n)
            meds.append(med)
            lo.append(med - mn)
            hi.append(mx - med)
            ax.scatter([n] * len(vals), vals, color=color, alpha=0.3, s=12)
        if xs:
            label = ("replay road: re-execution from the top" if road == "replay"
                     else "snapshot road: restore + log-tail replay")  # fmt: skip
            ax.errorbar(xs, meds, yerr=[lo, hi], color=color, marker=marker, capsize=4,
                        label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("turns recorded at the crash (model call + tool call each)")
    ax.set_ylabel("recovery: claim → progress (ms)")
    ax.set_title("Recovery after SIGKILL: claim → progress (warm worker; lease excluded)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def _reading(trials: list[Trial], turns: list[int]) -> list[str]:
    """What the recovery table shows, with its numbers."""

    def med(road: str, n: int, attr: str = "work_s") -> float | None:
        vals = [getattr(t, attr) for t in trials
                if t.road == road and t.turns == n and not t.cold]  # fmt: skip
        return median_spread(vals)[0] if vals else None

    lo, hi = min(turns), max(turns)
    r_lo, r_hi = med("replay", lo), med("replay", hi)
    s_lo, s_hi = med("snapshot", lo), med("snapshot", hi)
    if r_lo is None or r_hi is None or s_lo is None or s_hi is None or hi == lo:
        return []
    per_turn = (r_hi - r_lo) / (hi - lo) * 1000
    restore = [((t.fetch_ms or 0) + (t.restore_ms or 0)) for t in trials
               if t.road == "snapshot" and t.fetch_ms is not None]  # fmt: skip
    after = [t.work_s - t.takeover_s for t in trials
             if t.road == "snapshot" and not t.cold and t.turns != lo]  # fmt: skip
    return [
        "",
        f"Reading it: the replay road re-executes this agent from the top in {r_lo * 1e3:.0f} "
        f"ms at {lo:,} turns and {r_hi * 1e3:.0f} ms at {hi:,} (≈{per_turn:.2f} ms per "
        "recorded turn: reading the journal and answering each call from it). The snapshot "
        f"road took {s_lo * 1e3:,.0f} ms at {lo:,} turns and {s_hi * 1e3:,.0f} ms at {hi:,}: "
        "its cost is the fetch and restore of the snapshot "
        f"({min(restore):,.0f}–{max(restore):,.0f} ms here), nearly independent of the run's "
        "length; from the `restored` entry to progress (the log-tail replay and the first "
        f"new call) took {min(after or [0]) * 1e3:.0f}–{max(after or [0]) * 1e3:.0f} ms above "
        f"{lo:,} turns. For a cheap agent like this one "
        "the replay road recovers faster at every length measured; the snapshot road's "
        "advantage is what the replay road cannot do at all (memory, files and subprocesses "
        "come back as they were) and a recovery cost that does not grow with the journal. "
        "In an earlier run (notes written from its logs, not regenerated: check them against "
        "the table) the snapshot road paid three more costs: (1) the "
        "fetch reads one blob per chunk, and the sandboxed agent's images (60–90 MB, it "
        "imports both SDKs) are cut in 4 KiB windows below 64 MiB (~15,000–17,000 chunks, "
        "fetch ~1.7–1.9 s) but in 16 KiB windows above (~6,000 chunks, ~0.5–0.9 s), so the "
        "smaller images of the 10-turn run restored slowest; (2) `interval` counts from the "
        "claim, not from the restore: when the restore took longer than the interval, the "
        "new worker checkpointed the just-restored sandbox at once (dump + save, ~1.4 s) "
        "before the process could go on; (3) a cold worker imports `openai` and `anthropic` "
        "(~0.6 + ~1.2 s here; `non_retryable_errors()` imports both) at its first model "
        "call, on either road.",
    ]


def report(
    args: argparse.Namespace,
    env: Any,
    trials: list[Trial],
    sw: list[dict[str, float]],
    mem: dict[str, Any],
    plotted: bool,
    elapsed: float,
    load: float | None,
) -> str:
    turns = [int(t) for t in args.turns.split(",")]
    lines = [
        "## Recovery, suspend and wake, memory of waiting runs (`bench/recovery.py`)",
        "",
        f"Machine: {machine()}; CRIU from `{env.criu or 'none'}`; fresh TORPOR_HOME, SQLite "
        f"store (WAL, synchronous=FULL), local blob store. Worker lease {args.lease:g} s. "
        f"The benchmark took {elapsed / 60:.1f} min on a machine shared with other work "
        "(other engineers' test suites ran meanwhile). Medians (min–max).",
        "",
        "### Recovery after SIGKILL",
        "",
        "A scripted agent (`torpor.Agent`, one typed tool `add`, the scripted model server "
        "over HTTP through the Anthropic SDK; one turn = a model call + a tool call) runs in a "
        "`torpor worker`; when its log holds N model calls the worker's process group is "
        "SIGKILLed, and an idle standby worker takes the run over when the lease expires. "
        "Standbys are started with the SDKs, torpor's sandbox and snapshot modules and this "
        "file imported and one model call made (a long-lived worker's state); the *cold "
        "worker* rows instead start a fresh `torpor worker` at the kill. One run per road "
        f"grows through {', '.join(f'{n:,}' for n in turns)} turns and is crashed "
        f"{args.repeat} times at each (each crash 2 turns after the previous recovery), so "
        "*turns at crash* lists the three. *Recovery* = from the new worker's claim of the "
        "run (exact: the claim sets `lease_expires_at` = now + lease, read before the first "
        "renewal) to the first new `model_call`/`tool_result` entry after the crash point "
        "(the run making progress again): for the replay road, loading the journal and "
        "re-executing the workflow from the top with every recorded call answered from it; "
        "for the snapshot road, removing the dead worker's sandbox, fetching and restoring "
        "the newest snapshot, and the log-tail replay of the calls made after it. *Kill → "
        f"progress* adds the lease expiry ({args.lease:g} s, a setting) and the idle "
        "worker's claim polling (0.2 s doubling to 2 s). The snapshot road's workers ran "
        f"with `TORPOR_CHECKPOINT_POLICY={args.policy}` (`step` would checkpoint twice per "
        "turn, ~0.5 s each here).",
        "",
        "| turns | road | turns at crash | recovery ms | of it: claim → recovered/restored ms "
        "| kill → progress s | one turn before the crash ms | snapshot age at crash (log "
        "entries to replay) | fetch + CRIU restore ms | model calls paid twice | runs ended "
        "right |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plan = [(n, False) for n in turns] + [(args.cold_turns, True)]
    for n, cold in plan:
        for road in ("replay", "snapshot"):
            ts = [t for t in trials if t.road == road and t.turns == n and t.cold == cold]
            if not ts:
                continue
            at = "/".join(str(t.turns_at_crash) for t in ts)
            if road == "snapshot":
                ages = [t.crash_seq - t.snapshot_seq for t in ts if t.snapshot_seq is not None]
                age = "/".join(str(a) for a in ages) or "no snapshot"
                fr = format_ms([((t.fetch_ms or 0) + (t.restore_ms or 0)) / 1000 for t in ts
                                if t.fetch_ms is not None])  # fmt: skip
            else:
                age = f"all ({'/'.join(str(t.crash_seq) for t in ts)})"
                fr = "—"
            lines.append(
                f"| {n:,}{' (cold worker)' if cold else ''} | {road} | {at} "
                f"| {format_ms([t.work_s for t in ts])} "
                f"| {format_ms([t.takeover_s for t in ts])} | {_s([t.wall_s for t in ts])} "
                f"| {format_ms([t.turn_s for t in ts], 1)} | {age} | {fr} "
                f"| {sum(t.paid_twice for t in ts)} | {sum(t.ok for t in ts)}/{len(ts)} |"
            )
    notes = sorted({f"{t.road} {t.turns}: {t.note}" for t in trials if t.note})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    if plotted:
        lines += ["", "![recovery time against turns, both roads](recovery.png)"]
    lines += _reading(trials, turns)
    if sw:
        lines += [
            "",
            "### Suspend and wake (snapshot road)",
            "",
            "A snapshot-road workflow waits for an event (`wait_for_event` without a timeout, "
            "so it is suspended at once). *Suspend* = `wait` entry → `suspended` entry (the "
            "sandbox stops itself, CRIU dump, snapshot stored, run released). *Wake* = "
            "`torpor.send` → `event` entry: the idle worker's claim poll (≤ 2 s), fetch + "
            f"restore, and the restored process looking again. {len(sw)} runs, one worker.",
            "",
            "| suspend ms | of it: CRIU dump ms | wake ms | of it: send → claim ms "
            "| claim → restored ms | (fetch ms | CRIU restore ms) | restored → event ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {format_ms([r['suspend_s'] for r in sw])} "
            f"| {format_ms([r['dump_ms'] / 1000 for r in sw])} "
            f"| {format_ms([r['wake_s'] for r in sw])} | {format_ms([r['claim_s'] for r in sw])} "
            f"| {format_ms([r['restore_s'] for r in sw])} "
            f"| {format_ms([r.get('fetch_ms', float('nan')) / 1000 for r in sw])} "
            f"| {format_ms([r.get('criu_ms', float('nan')) / 1000 for r in sw])} "
            f"| {format_ms([r['look_s'] for r in sw])} |",
        ]
    if mem:
        lines += [
            "",
            "### Memory of waiting runs",
            "",
            'Runs of a workflow that waits for an event (`wait_for_event("go")`, no '
            "timeout). Memory is summed over the processes holding the runs (RSS counts "
            "shared pages once per process, PSS shares them out); *per run* is the growth over "
            "the idle worker (or the whole process), divided by the runs; *per 1,000 runs* "
            "scales that linearly where fewer ran.",
            "",
            "| how the runs wait | runs measured | memory held: RSS (PSS) | memory per run "
            "| per 1,000 runs | disk per run | notes |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        s = mem.get("suspended")
        if s:
            n = max(1, s["suspended"])
            grown = s["worker_rss"] - s["idle_rss"]
            samples = s.get("rss_samples") or []
            slope = ""
            if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
                slope = (f"; the worker's RSS grew with every suspension (first sample "
                         f"{_mb(samples[0][1])} at {samples[0][0]} suspended, last "
                         f"{_mb(samples[-1][1])} at {samples[-1][0]}), peaks of "
                         f"{_mb(max(r for _, r in samples))} during saves")  # fmt: skip
            saves = s.get("store_ms") or []
            save = format_ms([v / 1000 for v in saves]) if saves else "—"
            lines.append(
                f"| snapshot road, suspended: no process left, one idle worker "
                f"| {s['suspended']:,} | {_mb(s['worker_rss'])} ({_mb(s['worker_pss'])}) for the "
                f"worker (idle before: {_mb(s['idle_rss'])}) | {_kb(grown / n)} (the worker's "
                f"growth) | {_mb(grown / n * 1000)} | {_mb(s['stored_bytes'] / n)} stored "
                f"({_mb(s['raw_bytes'] / n)} raw image; {_mb(s['blob_disk'] / n)} of disk "
                f"blocks) | {s['processes']} process, {s['sandboxes_left']} sandboxes left; "
                f"suspending {n:,} took {s['seconds']:.0f} s with `--concurrency "
                f"{args.suspend_concurrency}` (snapshot save {save} ms each); "
                f"{s['new_chunks']:,} of {s['chunks']:,} chunks new: little dedup between "
                f"processes; SQLite file {_mb(s['db_bytes'])}{slope} |"
            )
        t = mem.get("threads")
        if t:
            n = max(1, t["waiting"])
            per = (t["rss"] - t["idle_rss"]) / n
            lines.append(
                f"| replay road, live: a thread each in one `torpor worker --concurrency {n} "
                f"--park-after 1e9` | {t['waiting']:,} | {_mb(t['rss'])} ({_mb(t['pss'])}) "
                f"(idle before: {_mb(t['idle_rss'])}) | {_kb(per)} | {_mb(per * 1000)} | "
                f"journal rows | {t['threads']} threads; each polls the store every 0.5 s; lease "
                "30 s: with a 2 s lease the heartbeat (one transaction per run) fell behind and "
                "the worker re-claimed its own runs, fencing their first threads; "
                f"{t['completed']} completed after the event |"
            )
        p = mem.get("processes")
        if p:
            m = max(1, p["waiting"])
            lines.append(
                f"| live: one Python process each (torpor imported, the replay-road run "
                f"executing in it, blocked in `wait_for_event`) | {p['waiting']:,} "
                f"| {_mb(p['rss'])} ({_mb(p['pss'])}) | {_mb(p['rss'] / m)} ({_mb(p['pss'] / m)})"
                f" | {p['rss'] / m * 1000 / 1e9:.1f} GB ({p['pss'] / m * 1000 / 1e9:.1f} GB) "
                "| journal rows | a live agent process would also hold its SDKs and conversation "
                f"(a suspended run's raw image above: "
                f"{_mb(s['raw_bytes'] / max(1, s['suspended'])) if s else '—'}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="turns 10,100; 2 repetitions; 3 suspend/wake; 50/200/20 for memory",
    )
    parser.add_argument("--turns", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument(
        "--policy",
        default="interval:2",
        help="TORPOR_CHECKPOINT_POLICY of the snapshot road's workers",
    )
    parser.add_argument(
        "--cold-turns",
        type=int,
        default=10,
        help="also crash runs of this many turns with a cold new worker (0: no)",
    )
    parser.add_argument("--suspend-repeat", type=int, default=5)
    parser.add_argument(
        "--suspended",
        type=int,
        default=100,
        help="runs suspended at once (each takes ~3 s of a 2-core machine)",
    )
    parser.add_argument("--suspend-concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1000, help="live runs, one thread each")
    parser.add_argument("--processes", type=int, default=100, help="live runs, one process each")
    parser.add_argument("--only", default="recovery,suspend,suspended,threads,processes")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the parts of --raw that this invocation does not measure",
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--raw",
        default="/tmp/torpor-bench-recovery.json",
        help="the measurements are saved here as JSON",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the table and plot from --raw"
    )
    args = parser.parse_args()  # fmt: skip
    if args.report_only:
        saved = json.loads(Path(args.raw).read_text())
        for key, value in saved["args"].items():
            if key not in ("report_only", "no_write", "raw"):
                setattr(args, key, value)
        loaded = [Trial(**t) for t in saved["trials"]]
        env_like = argparse.Namespace(criu=saved["criu"])
        plotted = bool(loaded) and plot(loaded, [int(t) for t in args.turns.split(",")])
        table = report(args, env_like, loaded, saved["sw"], saved["mem"], plotted,
                       saved["elapsed"], saved.get("load"))  # fmt: skip
        print(table)
        if not args.no_write:
            write_section("recovery", table)
            progress("wrote docs/benchmarks.md" + (" and docs/recovery.png" if plotted else ""))
        return
    if args.quick:
        args.turns, args.repeat, args.suspend_repeat = "10,100", 2, 3
        args.suspended, args.threads, args.processes = 50, 200, 20
    only = set(args.only.split(","))
    t0 = time.monotonic()
    env = Env(args.lease)
    progress(f"TORPOR_HOME={env.home}")
    from torpor.store import open_store

    store = open_store()
    torpor.configure(store=store)
    roads = ["replay", "snapshot"] if env.criu else ["replay"]
    if not env.criu:
        progress(f"no CRIU: the snapshot road is skipped ({env.criu_error})")
    trials: list[Trial] = []
    sw: list[dict[str, float]] = []
    mem: dict[str, Any] = {}
    try:
        if "recovery" in only:
            points = [int(t) for t in args.turns.split(",")]
            plan = [(road, points, False) for road in roads]
            if args.cold_turns:
                plan += [(road, [args.cold_turns], True) for road in roads]
            for road, pts, cold in plan:
                trials += recovery_series(env, store, road, pts, args.repeat, args.policy, cold)
        if "suspend" in only and env.criu:
            sw = suspend_wake(env, store, args.suspend_repeat)
        if "suspended" in only and env.criu:
            mem["suspended"] = memory_suspended(env, store, args.suspended,
                                                args.suspend_concurrency)  # fmt: skip
            progress(f"memory suspended: {json.dumps(mem['suspended'])}")
        if "threads" in only:
            mem["threads"] = memory_threads(env, store, args.threads)
            progress(f"memory threads: {json.dumps(mem['threads'])}")
        if "processes" in only:
            mem["processes"] = memory_processes(env, store, args.processes)
            progress(f"memory processes: {json.dumps(mem['processes'])}")
    finally:
        store.close()
        env.close()
    elapsed, load = time.monotonic() - t0, os.getloadavg()[0]
    from dataclasses import asdict

    if args.merge and Path(args.raw).exists():
        saved = json.loads(Path(args.raw).read_text())
        if "recovery" not in only:
            trials = [Trial(**t) for t in saved["trials"]]
            for key in ("turns", "repeat", "policy", "cold_turns", "lease"):
                setattr(args, key, saved["args"][key])
        if "suspend" not in only:
            sw = saved["sw"]
            args.suspend_repeat = saved["args"]["suspend_repeat"]
        for key in ("suspended", "threads", "processes"):
            if key not in only and key in saved["mem"]:
                mem[key] = saved["mem"][key]
                if key == "suspended":
                    args.suspend_concurrency = saved["args"]["suspend_concurrency"]
                setattr(args, key, saved["args"][key])
        elapsed += saved["elapsed"]

    raw = {
        "args": vars(args),
        "criu": env.criu,
        "trials": [asdict(t) for t in trials],
        "sw": sw,
        "mem": mem,
        "elapsed": elapsed,
        "load": load,
    }
    Path(args.raw).write_text(json.dumps(raw))
    progress(f"raw measurements: {args.raw}")
    plotted = bool(trials) and plot(trials, [int(t) for t in args.turns.split(",")])
    table = report(args, env, trials, sw, mem, plotted, elapsed, load)
    print(table)
    if not args.no_write:
        save_results("recovery", raw)
        write_section("recovery", table)
        progress("wrote docs/benchmarks.md" + (" and docs/recovery.png" if plotted else ""))


if __name__ == "__main__":
    main()
