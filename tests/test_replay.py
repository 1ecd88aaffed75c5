"""The replay road in one process, on SQLite and PostgreSQL: journal, retries, errors,
determinism, versioning, waits, children, cancellation, fork."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pydantic
import pytest

import torpor
from torpor import RunStatus
from torpor.runtime._process import the_executor as _the_executor
from torpor.store import Store
from torpor.testing import UnrecordedCallError, replay

sys.path.insert(0, str(Path(__file__).parent / "workflows"))
import golden_wf

GOLDEN = json.loads((Path(__file__).parent / "golden" / "order.json").read_text())
calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def runtime(store: Store):
    torpor.configure(store=store)
    calls.clear()
    golden_wf.executed.clear()
    yield store
    torpor.configure(store=store)  # stops this test's embedded executor


# -- workflows used below -------------------------------------------------------------------


@dataclasses.dataclass
class Receipt:
    id: str
    cents: int


class Quote(pydantic.BaseModel):
    item: str
    price: float


@torpor.step()
def count(label: str) -> int:
    calls[label] += 1
    return calls[label]


@torpor.step()
def make_receipt(cents: int) -> Receipt:
    calls["receipt"] += 1
    return Receipt(id=f"rc-{cents}", cents=cents)


@torpor.step()
def make_quote(item: str) -> Quote:
    calls["quote"] += 1
    return Quote(item=item, price=9.5)


@torpor.workflow()
def typed_results() -> list[str]:
    r = make_receipt(500)
    q = make_quote("book")
    assert isinstance(r, Receipt) and isinstance(q, Quote), (type(r), type(q))
    return [r.id, q.item, str(q.price)]


@torpor.workflow()
def counting(n: int) -> list[int]:
    return [count(f"c{i}") for i in range(n)]


@torpor.step(retries=3, backoff=0.01)
def flaky(fail_times: int) -> str:
    calls["flaky"] += 1
    if calls["flaky"] <= fail_times:
        raise ConnectionError(f"attempt {calls['flaky']} failed")
    return "ok"


@torpor.workflow()
def with_retries(fail_times: int) -> str:
    return flaky(fail_times)


@torpor.step(retries=5, backoff=0.01, non_retryable=(ValueError,))
def picky() -> str:
    calls["picky"] += 1
    raise ValueError("bad input: no retry helps")


@torpor.workflow()
def catches_step_error() -> str:
    try:
        picky()
    except ValueError as exc:
        return f"caught {exc}"
    return "not raised"


@torpor.workflow()
def uncaught_step_error() -> str:
    return picky()


class Opaque:
    pass


@torpor.step()
def returns_opaque() -> Opaque:
    return Opaque()


@torpor.workflow()
def unrecordable() -> str:
    returns_opaque()
    return "unreachable"


@torpor.workflow()
def recorded_values() -> list[str]:
    return [str(torpor.now()), str(torpor.random()), str(torpor.uuid4())]


@torpor.workflow()
def waits_for(name: str, timeout: float | None) -> object:
    count("before")
    return torpor.wait_for_event(name, timeout=timeout)


@torpor.workflow()
def child(x: int) -> int:
    return count("child") * 0 + x * 2


@torpor.workflow()
def parent(x: int) -> int:
    first = torpor.start(child, x)
    second = torpor.start(child, x + 1)
    return first.result() + second.result()


@torpor.workflow()
def long_loop(n: int) -> int:
    for _ in range(n):
        count("loop")
        time.sleep(0.02)
    return n


@torpor.step()
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    calls["async"] += 1
    return 2 * x


@torpor.workflow()
async def async_gather(xs: list[int]) -> list[int]:
    return list(await asyncio.gather(*(async_double(x) for x in xs)))


@torpor.step(timeout=0.2)
def too_slow() -> str:
    time.sleep(2)
    return "late"


@torpor.workflow()
def times_out() -> str:
    return too_slow()


@torpor.step()
def key_step() -> str:
    return torpor.idempotency_key()


@torpor.workflow()
def keys() -> list[str]:
    return [key_step(), key_step()]


# -- tests ----------------------------------------------------------------------------------


def test_steps_are_recorded_and_a_fork_replays_them_without_executing(store: Store) -> None:
    run = torpor.start(counting, 3)
    assert run.result(timeout=30) == [1, 1, 1]
    entries = [e for e in run.log() if e.kind == "step"]
    assert [(e.payload["pos"], e.payload["name"], e.payload["result"]) for e in entries] == [
        (1, "count", 1),
        (2, "count", 1),
        (3, "count", 1),
    ]
    assert store.get_run(run.id).status is RunStatus.COMPLETED
    replay = torpor.fork(run.id)
    assert replay.result(timeout=30) == [1, 1, 1]
    assert sum(calls.values()) == 3  # nothing executed again
    assert store.get_run(replay.id).forked_from == run.id


def test_fork_at_a_position_executes_from_there(store: Store) -> None:
    run = torpor.start(counting, 4)
    run.result(timeout=30)
    forked = torpor.fork(run.id, at=3)
    assert forked.result(timeout=30) == [1, 1, 2, 2]  # steps 3 and 4 ran again
    assert calls == Counter({"c0": 1, "c1": 1, "c2": 2, "c3": 2})


def test_dataclass_and_pydantic_results_replay_as_their_types() -> None:
    run = torpor.start(typed_results)
    assert run.result(timeout=30) == ["rc-500", "book", "9.5"]
    step_results = [e.payload["result"] for e in run.log() if e.kind == "step"]
    assert step_results == [{"id": "rc-500", "cents": 500}, {"item": "book", "price": 9.5}]
    assert torpor.fork(run.id).result(timeout=30) == ["rc-500", "book", "9.5"]
    assert calls == Counter({"receipt": 1, "quote": 1})


def test_retries_back_off_and_are_visible_in_the_log() -> None:
    run = torpor.start(with_retries, 2)
    assert run.result(timeout=30) == "ok"
    log = run.log()
    retries = [e.payload for e in log if e.kind == "step_retry"]
    assert [(r["attempt"], r["error"]["type"]) for r in retries] == [
        (1, "builtins.ConnectionError"),
        (2, "builtins.ConnectionError"),
    ]
    assert all(0 < r["delay"] <= 0.04 for r in retries)
    (done,) = [e.payload for e in log if e.kind == "step"]
    assert (done["result"], done["attempt"]) == ("ok", 3)


def test_exhausted_retries_fail_the_run_with_the_error() -> None:
    run = torpor.start(with_retries, 10)
    with pytest.raises(torpor.RunFailedError, match="ConnectionError: attempt 4 failed"):
        run.result(timeout=30)
    assert calls["flaky"] == 4


def test_non_retryable_errors_fail_at_once_and_replay_as_the_same_type() -> None:
    run = torpor.start(catches_step_error)
    assert run.result(timeout=30) == "caught bad input: no retry helps"
    assert calls["picky"] == 1
    assert torpor.fork(run.id).result(timeout=30) == "caught bad input: no retry helps"
    assert calls["picky"] == 1  # the recorded ValueError was raised again, not re-earned
    failed = torpor.start(uncaught_step_error)
    with pytest.raises(torpor.RunFailedError, match="ValueError: bad input"):
        failed.result(timeout=30)


def test_an_unrecordable_result_is_a_clear_error_naming_the_type(store: Store) -> None:
    run = torpor.start(unrecordable)
    with pytest.raises(torpor.RunFailedError) as info:
        run.result(timeout=30)
    message = info.value.message
    assert "returns_opaque" in message and "test_replay.Opaque" in message
    assert "dataclass or a pydantic model" in message
    assert [e.kind for e in run.log()] == ["failed"]


def test_now_random_uuid_are_recorded() -> None:
    run = torpor.start(recorded_values)
    first = run.result(timeout=30)
    time.sleep(0.01)
    assert torpor.fork(run.id).result(timeout=30) == first
    assert [e.payload["name"] for e in run.log() if e.kind == "value"] == ["now", "random", "uuid4"]


def test_wait_timeout_returns_none_and_is_recorded() -> None:
    run = torpor.start(waits_for, "never", 0.3)
    assert run.result(timeout=30) is None
    assert [e.kind for e in run.log()][-2:] == ["timeout", "completed"]


def test_event_sent_before_and_during_the_wait_is_delivered(store: Store) -> None:
    run = torpor.start(waits_for, "go", None, detach=True)
    torpor.send(run.id, "go", {"early": True})
    _the_executor().claim(run_id=run.id)
    assert run.result(timeout=30) == {"early": True}

    late = torpor.start(waits_for, "go", 60)
    deadline = time.monotonic() + 30
    while store.get_run(late.id).status is not RunStatus.WAITING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    torpor.send(late.id, "go", [1, 2])
    assert late.result(timeout=30) == [1, 2]
    assert store.list_events(late.id)[0].consumed_seq is not None


def test_child_workflows(store: Store) -> None:
    run = torpor.start(parent, 10)
    assert run.result(timeout=30) == 42
    children = [e.payload["child"] for e in run.log() if e.kind == "child"]
    assert children == [f"{run.id}-1", f"{run.id}-2"]
    for child_id in children:
        record = store.get_run(child_id)
        assert (record.parent_id, record.status) == (run.id, RunStatus.COMPLETED)
    # Replayed, the parent gets the same children and results back without new runs.
    assert torpor.fork(run.id).result(timeout=30) == 42
    assert calls["child"] == 2


def test_cancel_stops_at_the_next_step_boundary(store: Store) -> None:
    run = torpor.start(long_loop, 500)
    deadline = time.monotonic() + 30
    while calls["loop"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert torpor.cancel(run.id) is RunStatus.RUNNING  # requested; a worker holds it
    with pytest.raises(torpor.RunCancelledError):
        run.result(timeout=30)
    executed = calls["loop"]
    time.sleep(0.2)
    assert calls["loop"] == executed < 500
    kinds = [e.kind for e in run.log()]
    assert kinds[-1] == "cancelled" and "cancel_requested" in kinds


def test_async_workflow_with_parallel_steps() -> None:
    run = torpor.start(async_gather, [1, 2, 3, 4])
    assert run.result(timeout=30) == [2, 4, 6, 8]
    positions = {e.payload["pos"]: e.payload["result"] for e in run.log() if e.kind == "step"}
    assert positions == {1: 2, 2: 4, 3: 6, 4: 8}  # positions follow the calls, not completion
    assert torpor.fork(run.id).result(timeout=30) == [2, 4, 6, 8]
    assert calls["async"] == 4


def test_step_timeout() -> None:
    run = torpor.start(times_out)
    with pytest.raises(torpor.RunFailedError, match=r"did not finish within its timeout of 0\.2 s"):
        run.result(timeout=30)


def test_idempotency_keys_are_per_call_position() -> None:
    run = torpor.start(keys)
    assert run.result(timeout=30) == [f"{run.id}:1", f"{run.id}:2"]
    with pytest.raises(torpor.TorporError, match="only be called inside a step"):
        torpor.idempotency_key()
    assert count("plain") == 1  # outside a workflow a step is a plain call


def test_resume_a_failed_run(store: Store) -> None:
    run = torpor.start(with_retries, 4)
    with pytest.raises(torpor.RunFailedError):
        run.result(timeout=30)
    resumed = torpor.resume(run.id)
    assert resumed.result(timeout=30) == "ok"  # the fifth call succeeds
    assert store.get_run(run.id).attempt == 2


def test_unknown_workflow_and_unregistered_function_errors(store: Store) -> None:
    with pytest.raises(torpor.TorporError, match="is not a workflow"):
        torpor.start(len, [1])
    with pytest.raises(torpor.WorkflowNotFoundError):
        torpor.start("no.such.workflow")
    with pytest.raises(torpor.TorporError, match="cannot record"):
        torpor.start(counting, threading.Lock())


# -- golden journals --------------------------------------------------------------------------


def test_golden_journal_replays_to_the_same_result() -> None:
    replayed = replay("golden.order", GOLDEN["log"], *GOLDEN["input"]["args"])
    assert replayed.status is RunStatus.COMPLETED
    assert replayed.result() == GOLDEN["output"]
    assert sum(golden_wf.executed.values()) == 0
    assert [e.kind for e in replayed.appended] == []  # no warning, nothing executed


def test_changed_workflow_raises_nondeterminism_and_fails() -> None:
    replayed = replay("golden.order_changed", GOLDEN["log"], *GOLDEN["input"]["args"])
    assert replayed.status is RunStatus.FAILED
    with pytest.raises(torpor.NondeterminismError) as info:
        replayed.result()
    assert (info.value.position, info.value.recorded, info.value.called) == (2, "charge", "refund")
    assert "run replay position 2: recorded `charge`, called `refund`" in str(info.value)
    assert "torpor.patched" in str(info.value)
    assert golden_wf.executed["refund"] == 0


def test_a_log_that_ends_early_is_no_licence_to_execute() -> None:
    replayed = replay("golden.order", GOLDEN["log"][:1], *GOLDEN["input"]["args"])
    with pytest.raises(UnrecordedCallError, match="executed `charge` at position 2"):
        replayed.result()
    assert sum(golden_wf.executed.values()) == 1  # the body ran once; nothing was recorded


def test_changed_workflow_fails_in_a_worker_too(store: Store) -> None:
    record = store.create_run("golden.order_changed", input=GOLDEN["input"])
    for entry in GOLDEN["log"]:
        if entry["kind"] not in ("completed", "failed", "cancelled"):
            store.append(record.id, entry["kind"], entry["payload"])
    _the_executor().claim(run_id=record.id)
    run = torpor.Run(record.id, store)
    with pytest.raises(torpor.RunFailedError) as info:
        run.result(timeout=30)
    record = store.get_run(run.id)
    assert record.status is RunStatus.FAILED
    assert record.error["type"] == "torpor._errors.NondeterminismError"
    assert f"run {run.id} position 2: recorded `charge`, called `refund`" in str(info.value)


def test_change_guarded_by_patched_replays_old_runs_and_runs_new_ones(store: Store) -> None:
    old = replay("golden.order_patched", GOLDEN["log"], *GOLDEN["input"]["args"])
    assert old.result() == GOLDEN["output"]
    assert golden_wf.executed["fraud_check"] == 0  # the old run keeps the old path
    new = torpor.start(golden_wf.order_patched, "book", 1299)
    assert new.result(timeout=30) == GOLDEN["output"]
    assert golden_wf.executed["fraud_check"] == 1
    patches = [e.payload for e in new.log() if e.kind == "patch"]
    assert patches == [{"pos": 2, "change": "fraud-check", "value": True}]


def test_argument_mismatch_is_a_warning_not_a_failure() -> None:
    replayed = replay("golden.order", GOLDEN["log"], "lamp", 1299)
    assert replayed.result() == GOLDEN["output"]  # the recorded results win
    warnings = [e.payload for e in replayed.appended if e.kind == "warning"]
    assert [w["at"] for w in warnings] == [1, 3]
    assert "other arguments than recorded" in warnings[0]["message"]


def test_argument_warning_is_logged_once_across_replays() -> None:
    said = {"kind": "warning", "payload": {"at": 1, "message": "said before"}}
    replayed = replay("golden.order", [*GOLDEN["log"], said], "lamp", 1299)
    assert replayed.result() == GOLDEN["output"]
    assert [e.payload["at"] for e in replayed.appended if e.kind == "warning"] == [3]


# -- host calls (what the agent's model calls are) ----------------------------------------


class PickyError(Exception):
    """Like an SDK's errors: its constructor wants more than a message."""

    def __init__(self, message: str, *, response: object) -> None:
        super().__init__(message)
        self.response = response


def _cancel_then_answer(request: dict) -> str:
    store = torpor.runtime._process.the_store()
    store.cancel_run(request["run"])  # a cancel that arrives while the call is in flight
    return "answer"


def _fail_pickily(request: dict) -> str:
    raise PickyError("overloaded", response={"status": 529})


torpor.engine.register_host_call("test.cancel_then_answer", _cancel_then_answer)
torpor.engine.register_host_call("test.fail_pickily", _fail_pickily)


@torpor.workflow()
def calls_the_host(call: str) -> str:
    ctx = torpor.engine.current()
    assert ctx is not None
    try:
        answer = ctx.host_step(call, {"run": ctx.run.id}, name="host", kind="model_call", retries=0)
    except PickyError as exc:  # the live exception, not a recorded copy
        answer = f"caught {exc.response}"
    calls["after the host call"] += 1
    count("after")
    return str(answer)


def test_a_cancel_during_a_host_call_stops_the_run_before_its_next_step() -> None:
    run = torpor.start(calls_the_host, "test.cancel_then_answer")
    with pytest.raises(torpor.RunCancelledError):
        run.result(timeout=30)
    assert calls["after the host call"] == 1 and calls["after"] == 0
    assert [e.kind for e in run.log()][-2:] == ["model_call", "cancelled"]


def test_a_host_call_raises_its_own_exception_when_it_ran_here() -> None:
    run = torpor.start(calls_the_host, "test.fail_pickily")
    assert run.result(timeout=30) == "caught {'status': 529}"
    recorded = [e.payload for e in run.log() if e.kind == "model_call"]
    assert recorded[0]["error"]["type"].endswith("PickyError")


def test_a_recorded_child_result_replays_without_looking_the_child_up() -> None:
    def started(pos: int, child_id: str) -> dict:
        return {"kind": "child", "payload": {"pos": pos, "workflow": child.__module__ + ".child",
                                              "child": child_id}}  # fmt: skip

    def ended(pos: int, child_id: str, output: int) -> dict:
        return {"kind": "child_result", "payload": {"pos": pos, "child": child_id,
                "status": "completed", "output": output, "error": None}}  # fmt: skip

    log = [started(1, "r-1"), started(2, "r-2"), ended(3, "r-1", 6), ended(4, "r-2", 8)]
    replayed = replay(parent, log, 3)
    assert replayed.result() == 14, replayed
