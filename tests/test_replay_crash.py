"""Crash tests with real worker processes killed with SIGKILL (DESIGN.md, replay road)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli
from torpor import RunRecord, RunStatus
from torpor.store import open_store
from torpor.testing import WorkerGroup, wait_until

WORKFLOWS = Path(__file__).parent / "workflows"


@pytest.fixture
def workers(cli: Cli, tmp_path: Path) -> Iterator[WorkerGroup]:
    """Workers with the environment of ``cli``."""
    args = ("--lease", "1.5", "--park-after", "0.5")
    with WorkerGroup(*args, env=cli.env, logs=tmp_path / "logs") as group:
        yield group


def _wait_final(db_url: str, run_id: str, timeout: float = 60) -> RunRecord:
    with open_store(db_url) as store:
        return wait_until(
            lambda: (r := store.get_run(run_id)).status.terminal and r,
            f"{run_id} to end",
            timeout=timeout,
        )


SCENARIOS = [f"before:{n}" for n in range(1, 6)] + [f"inside:{n}" for n in range(1, 6)]


@pytest.mark.parametrize("hang", SCENARIOS)
def test_sigkilled_worker_run_completes_each_step_once(
    workers: WorkerGroup, cli: Cli, db_url: str, tmp_path: Path, hang: str
) -> None:
    lines = tmp_path / "lines.txt"
    ready = tmp_path / "ready"
    target = f"{WORKFLOWS / 'five_steps.py'}:five_steps"
    run_id = cli.ok("run", target, json.dumps([str(lines)]), "--detach")

    first = workers.start(TORPOR_TEST_HANG=hang, TORPOR_TEST_READY=str(ready))
    wait_until(ready.exists, f"the worker to reach {hang}")
    first.kill()

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
    workers: WorkerGroup, cli: Cli, db_url: str, tmp_path: Path
) -> None:
    run_id = cli.ok("run", f"{WORKFLOWS / 'waits.py'}:sleeper", "[3]", "--detach")
    first = workers.start()
    with open_store(db_url) as store:
        wait_until(lambda: any(e.kind == "sleep" for e in store.read(run_id)), "the sleep")
    first.kill()
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
    workers: WorkerGroup, cli: Cli, db_url: str, tmp_path: Path
) -> None:
    run_id = cli.ok("run", f"{WORKFLOWS / 'waits.py'}:approval", "--detach")
    first = workers.start()
    with open_store(db_url) as store:
        # The worker parks the waiting run (releases it) after 0.5 s.
        wait_until(
            lambda: (
                (r := store.get_run(run_id)).status is RunStatus.WAITING and r.lease_owner is None
            ),
            "the run to park",
        )
    assert first.stop(timeout=30) == 0, first.log()
    assert "sent 'approval'" in cli.ok("send", run_id, "approval", '{"ok": true}')
    with open_store(db_url) as store:
        assert store.get_run(run_id).status is RunStatus.WAITING
    workers.start()
    run = _wait_final(db_url, run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"answer": {"ok": True}}
