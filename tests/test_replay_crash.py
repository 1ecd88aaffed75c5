"""Crash tests with real worker processes killed with SIGKILL (DESIGN.md, replay road)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import torpor_env
from torpor import RunStatus
from torpor.store import open_store

WORKFLOWS = Path(__file__).parent / "workflows"


class Workers:
    """Starts `torpor worker` processes against one database and cleans them up."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torpor", "worker", "--lease", "1.5", "--park-after", "0.5"],
            env={**self.env, **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "torpor", *args],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def workers(db_url: str, tmp_path: Path):
    w = Workers(torpor_env(db_url, tmp_path / "home"))
    yield w
    w.close()


def _wait_for(predicate, timeout: float = 60, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_final(db_url: str, run_id: str, timeout: float = 60):
    with open_store(db_url) as store:
        return _wait_for(
            lambda: (r := store.get_run(run_id)).status.terminal and r, timeout, f"{run_id} to end"
        )


SCENARIOS = [f"before:{n}" for n in range(1, 6)] + [f"inside:{n}" for n in range(1, 6)]


@pytest.mark.parametrize("hang", SCENARIOS)
def test_sigkilled_worker_run_completes_each_step_once(
    workers: Workers, db_url: str, tmp_path: Path, hang: str
) -> None:
    lines = tmp_path / "lines.txt"
    ready = tmp_path / "ready"
    target = f"{WORKFLOWS / 'five_steps.py'}:five_steps"
    run_id = workers.cli("run", target, json.dumps([str(lines)]), "--detach")

    first = workers.start(TORPOR_TEST_HANG=hang, TORPOR_TEST_READY=str(ready))
    _wait_for(ready.exists, what=f"the worker to reach {hang}")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

    workers.start()
    run = _wait_final(db_url, run_id)
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.output == [f"line {n}" for n in range(1, 6)]
    assert run.attempt == 2

    written = lines.read_text().splitlines()
    assert [line.split()[:2] for line in written] == [["step", str(n)] for n in range(1, 6)]
    keys = [line.split() for line in Path(f"{lines}.keys").read_text().splitlines()]
    where, n = hang.split(":")
    # Step bodies are at-least-once: the step killed inside its body ran twice, with the
    # same idempotency key both times; every other body ran once.
    expected_runs = {k: 1 for k in range(1, 6)}
    if where == "inside":
        expected_runs[int(n)] = 2
    assert {k: sum(1 for s, _ in keys if int(s) == k) for k in range(1, 6)} == expected_runs
    assert len({key for s, key in keys if int(s) == int(n)}) == 1

    with open_store(db_url) as store:
        entries = store.read(run_id)
    steps = [e.payload["pos"] for e in entries if e.kind == "step"]
    assert steps == [1, 2, 3, 4, 5]  # each result recorded exactly once
    assert [e.payload["attempt"] for e in entries if e.kind == "recovered"] == [2]


def test_durable_sleep_survives_a_worker_restart(
    workers: Workers, db_url: str, tmp_path: Path
) -> None:
    run_id = workers.cli("run", f"{WORKFLOWS / 'waits.py'}:sleeper", "[3]", "--detach")
    first = workers.start()
    with open_store(db_url) as store:
        _wait_for(lambda: any(e.kind == "sleep" for e in store.read(run_id)), what="the sleep")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    workers.start()
    run = _wait_final(db_url, run_id)
    assert run.status is RunStatus.COMPLETED and run.output == "after"
    with open_store(db_url) as store:
        entries = store.read(run_id)
        timers = store.list_timers(run_id)
    sleeps = [e for e in entries if e.kind == "sleep"]
    assert len(sleeps) == 1  # the restart did not start the sleep over
    until = sleeps[0].payload["until"]
    assert [t.fire_at for t in timers] == [until]
    after = next(e for e in entries if e.kind == "step" and e.payload["result"] == "after")
    assert after.created_at >= until  # and it did not end early


def test_event_sent_while_no_worker_runs_is_delivered_later(
    workers: Workers, db_url: str, tmp_path: Path
) -> None:
    run_id = workers.cli("run", f"{WORKFLOWS / 'waits.py'}:approval", "--detach")
    first = workers.start()
    with open_store(db_url) as store:
        # The worker parks the waiting run (releases it) after 0.5 s.
        _wait_for(
            lambda: (
                (r := store.get_run(run_id)).status is RunStatus.WAITING and r.lease_owner is None
            ),
            what="the run to park",
        )
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert "sent 'approval'" in workers.cli("send", run_id, "approval", '{"ok": true}')
    with open_store(db_url) as store:
        assert store.get_run(run_id).status is RunStatus.WAITING
    workers.start()
    run = _wait_final(db_url, run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"answer": {"ok": True}}
