"""The gateway seam without a sandbox: a real `GatewayServer` on a unix socket, the real
`GatewayService` over a real store, and the sandbox's `GatewayJournal` in this process.

What comes out of a sandbox is hostile input: every malformed request gets an error naming
what was wrong and the worker goes on answering; errors keep their type and fields across the
boundary; a sandbox sees no run but its own and its children.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import torpor
from torpor import (
    FencedError,
    RunNotFoundError,
    RunRecord,
    RunStatus,
    Store,
    StoreUnavailableError,
)
from torpor.engine import StoreJournal, execute_run
from torpor.gateway import (
    GatewayClient,
    GatewayJournal,
    GatewayRequestError,
    GatewayServer,
    GatewayService,
    Reply,
)
from torpor.testing import wait_until


@torpor.step()
def double(x: int) -> int:
    return 2 * x


@torpor.workflow(name="gateway.flow")
def flow(x: int) -> int:
    first = double(x)
    value = torpor.random()
    second = double(first)
    assert 0 <= value < 1
    return second


@dataclass
class Host:
    """The worker's side of supervision, as simple as it gets: no checkpoints, short waits."""

    store: Store
    run: RunRecord
    worker_id: str = "w-test"
    happened: list[str] = field(default_factory=list)

    def spawn(self, run_id: str) -> None:
        self.happened.append(f"spawn {run_id}")

    def at_safepoint(self, force: bool, peer: int) -> Reply:
        return Reply("passed")

    def at_park(self, deadline: float | None, wake_on: dict[str, str], peer: int) -> Reply:
        return Reply("retry")

    def ended(self) -> None:
        self.happened.append("ended")

    def exited(self, status: str | None) -> None:
        self.happened.append(f"exited {status}")

    def lost(self) -> None:
        self.happened.append("lost")

    def unreachable(self, exc: StoreUnavailableError) -> None:
        self.happened.append("unreachable")


@pytest.fixture
def gateway(store: Store, tmp_path: Path) -> Iterator[tuple[Host, GatewayClient]]:
    run = store.create_run("gateway.flow", input={"args": [3], "kwargs": {}})
    claimed = store.claim_run("w-test", 30, run_id=run.id)
    assert claimed is not None
    host = Host(store, claimed)
    server = GatewayServer(tmp_path / "gateway.sock", GatewayService(host).handle)
    server.open()
    try:
        yield host, GatewayClient(str(tmp_path / "gateway.sock"))
    finally:
        server.close()


def _raw(path: str, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


@pytest.mark.parametrize(
    ("request_bytes", "named"),
    [
        (b"{not json\n", "not JSON"),
        (b'{"op": "launch_missiles"}\n', "op"),
        (b'{"op": "read", "after": -1}\n', "after"),
        (b'{"op": "append", "kind": "step"}\n', None),  # valid: a payload may be null
        (b'{"op": "append", "kind": "", "payload": 1}\n', "kind"),
        (b'{"op": "call_host", "pos": 1}\n', "name"),
        (b'{"op": "end", "status": "running"}\n', "status"),
        (b'{"op": "read", "after": 0, "sneaky": true}\n', "sneaky"),
        (b"[1, 2]\n", "not a JSON object"),
    ],
)
def test_malformed_requests_get_a_named_error_and_the_worker_goes_on(
    gateway: tuple[Host, GatewayClient], request_bytes: bytes, named: str | None
) -> None:
    host, client = gateway
    reply = _raw(client.path, request_bytes)
    if named is None:
        assert "result" in reply, reply
    else:
        assert "error" in reply and named in reply["error"]["message"], reply
    # The next call is answered as if nothing happened.
    assert client.call(torpor.gateway._ops.Hello())["run"]["id"] == host.run.id


def test_a_bad_request_is_raised_in_the_sandbox_as_a_gateway_request_error(
    gateway: tuple[Host, GatewayClient],
) -> None:
    _, client = gateway
    op = torpor.gateway._ops.Read.model_construct(after=-5, limit=None)
    with pytest.raises(GatewayRequestError) as info:
        client.call(op)
    assert "after" in info.value.problem


def test_a_fenced_write_crosses_the_gateway_as_a_fenced_error(
    gateway: tuple[Host, GatewayClient], store: Store
) -> None:
    host, client = gateway
    journal = GatewayJournal(client, host.run)
    journal.append("note", {"n": 1})
    store.update_run(host.run.id, host.run.epoch, status=RunStatus.QUEUED, release=True)
    taken = store.claim_run("w-other", 30, run_id=host.run.id)
    assert taken is not None and taken.epoch > host.run.epoch
    with pytest.raises(FencedError) as info:
        journal.append("note", {"n": 2})
    error = info.value
    assert (error.run_id, error.epoch, error.current_epoch) == (
        host.run.id, host.run.epoch, taken.epoch,
    )  # fmt: skip
    assert host.happened == ["lost"]
    assert [e.payload for e in store.read(host.run.id) if e.kind == "note"] == [{"n": 1}]


def test_a_sandbox_sees_its_children_and_no_other_run(
    gateway: tuple[Host, GatewayClient], store: Store
) -> None:
    host, client = gateway
    journal = GatewayJournal(client, host.run)
    stranger = store.create_run("gateway.flow", input={"args": [1], "kwargs": {}})
    with pytest.raises(RunNotFoundError):
        journal.child(stranger.id)
    # Nor can it adopt a stranger by naming it as a child to start.
    spec = torpor.engine.ChildSpec(
        stranger.id, "gateway.flow", torpor.Road.REPLAY, {}, "default", 0, {}
    )
    with pytest.raises(torpor.TorporError, match="is named"):
        journal.start_child(spec)
    assert store.get_run(stranger.id).parent_id is None and host.happened == []
    mine = torpor.engine.ChildSpec(f"{host.run.id}-1", "gateway.flow", torpor.Road.REPLAY,
                                   {"args": [2], "kwargs": {}}, "default", 0, {})  # fmt: skip
    journal.start_child(mine)
    assert journal.child(mine.run_id).parent_id == host.run.id
    assert host.happened == [f"spawn {mine.run_id}"]


def test_the_same_workflow_writes_the_same_log_through_either_journal(
    gateway: tuple[Host, GatewayClient], store: Store, tmp_path: Path
) -> None:
    host, client = gateway
    status = execute_run(
        GatewayJournal(client, host.run), worker_id="w-test", stopping=threading.Event()
    )
    assert status is RunStatus.COMPLETED and host.happened == ["ended"]
    through_gateway = store.get_run(host.run.id)
    assert through_gateway.output == 12

    direct = store.create_run("gateway.flow", input={"args": [3], "kwargs": {}})
    claimed = store.claim_run("w-test", 30, run_id=direct.id)
    assert claimed is not None
    journal = StoreJournal(store, claimed, workspace=tmp_path, spawn=lambda _: None)
    assert (
        execute_run(journal, worker_id="w-test", stopping=threading.Event()) is RunStatus.COMPLETED
    )

    def shape(run_id: str) -> list[tuple[str, object]]:
        out = []
        for entry in store.read(run_id):
            payload = dict(entry.payload) if isinstance(entry.payload, dict) else entry.payload
            if isinstance(payload, dict):
                payload.pop("value", None)  # torpor.random(): a different draw each run
            out.append((entry.kind, payload))
        return out

    assert shape(host.run.id) == shape(direct.id)
    assert [k for k, _ in shape(direct.id)] == ["step", "value", "step", "completed"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b'{"op": "park", "deadline": 1e300}\n',
        b'{"op": "add_timer", "name": "t", "fire_at": Infinity}\n',
        b'{"op": "add_timer", "name": "t", "fire_at": NaN}\n',
        b'{"op": "park", "wake_on": {"run": "r-1"}}\n',
    ],
)
def test_times_and_wakes_from_a_sandbox_are_bounded(
    gateway: tuple[Host, GatewayClient], store: Store, request_bytes: bytes
) -> None:
    host, client = gateway
    reply = _raw(client.path, request_bytes)
    assert "error" in reply and "bad gateway request" in reply["error"]["message"], reply
    assert store.get_run(host.run.id).wake_at is None


def test_a_non_finite_value_is_refused_as_on_the_replay_road(
    gateway: tuple[Host, GatewayClient], store: Store
) -> None:
    host, client = gateway
    journal = GatewayJournal(client, host.run)
    with pytest.raises(torpor.TorporError, match="not JSON"):
        journal.append("note", {"ratio": float("inf")})
    assert [e.kind for e in store.read(host.run.id)] == []  # not recorded as null


def test_a_fork_sees_the_children_its_source_started_and_only_those(
    gateway: tuple[Host, GatewayClient], store: Store, tmp_path: Path
) -> None:
    host, _ = gateway
    child = store.create_run("gateway.flow", parent_id=host.run.id, run_id=f"{host.run.id}-1")
    fork = store.create_run("gateway.flow", forked_from=host.run.id)
    claimed = store.claim_run("w-test", 30, run_id=fork.id)
    assert claimed is not None
    server = GatewayServer(tmp_path / "fork.sock", GatewayService(Host(store, claimed)).handle)
    server.open()
    try:
        # The fork's process is its source's, restored: it asks for the source's child.
        journal = GatewayJournal(GatewayClient(str(tmp_path / "fork.sock")), host.run)
        assert journal.child(child.id).id == child.id
        stranger = store.create_run("gateway.flow")
        with pytest.raises(RunNotFoundError):
            journal.child(stranger.id)
    finally:
        server.close()


def _old_runner(path: str, request: dict) -> dict:
    """One request as torpor 0.1's runner sends it (a process restored from its snapshot)."""
    return _raw(path, json.dumps(request).encode() + b"\n")


def test_a_process_restored_from_a_torpor_0_1_snapshot_is_still_answered(
    gateway: tuple[Host, GatewayClient], store: Store
) -> None:
    host, client = gateway
    run_id = host.run.id
    appended = _old_runner(client.path, {"op": "append", "kind": "note", "payload": {"n": 1},
                                         "expected_seq": None})  # fmt: skip
    assert appended["result"]["seq"] == 1
    safe = _old_runner(client.path, {"op": "safepoint", "pos": 1})
    assert safe["result"] == "passed"
    step = {"pos": 1, "name": "double", "result": 6}
    first = _old_runner(client.path, {"op": "append", "kind": "step", "payload": step,
                                      "once_after": 1})  # fmt: skip
    again = _old_runner(client.path, {"op": "append", "kind": "step", "payload": step,
                                      "once_after": 1})  # fmt: skip
    assert first["result"]["seq"] == again["result"]["seq"] == 2  # recorded once
    created = _old_runner(client.path, {"op": "create_run", "workflow": "gateway.flow",
                                        "road": "replay", "input": {"args": [1], "kwargs": {}},
                                        "queue": "default", "priority": 0, "parent_id": run_id,
                                        "run_id": f"{run_id}-2", "source": {}})  # fmt: skip
    old_form = created["result"]  # 0.1's runner rebuilds it with RunRecord(**...)
    old_form.update(road=torpor.Road(old_form["road"]), status=RunStatus(old_form["status"]))
    assert RunRecord(**old_form).parent_id == run_id
    assert _old_runner(client.path, {"op": "spawn", "run_id": f"{run_id}-2"})["result"] is None
    assert host.happened == [f"spawn {run_id}-2"]
    timer = _old_runner(client.path, {"op": "add_timer", "name": "sleep@3", "fire_at": 2e9})
    assert isinstance(timer["result"]["id"], int)
    model = _old_runner(client.path, {
        "op": "model", "pos": 4, "name": "model", "kind": "model_call", "after": 2,
        "request": {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                    "max_tokens": 16, "retries": 0, "system": "", "items": [], "tools": []},
    })  # fmt: skip
    assert model["result"]["pos"] == 4 and "error" in model["result"]  # nothing listens there
    ended = _old_runner(client.path, {"op": "update_run", "run_id": run_id, "status": "completed",
                                      "output": 12, "error": None,
                                      "entry": ["completed", {}]})  # fmt: skip
    assert ended["result"]["id"] == run_id and isinstance(ended["result"]["created_at"], float)
    assert store.get_run(run_id).status is RunStatus.COMPLETED
    assert store.get_run(run_id).output == 12 and "ended" in host.happened
    kinds = [e.kind for e in store.read(run_id)]
    assert kinds == ["note", "step", "model_call", "completed"]


def test_a_torpor_0_1_process_gets_its_fenced_error_in_its_own_form(
    gateway: tuple[Host, GatewayClient], store: Store
) -> None:
    host, client = gateway
    store.update_run(host.run.id, host.run.epoch, status=RunStatus.QUEUED, release=True)
    taken = store.claim_run("w-other", 30, run_id=host.run.id)
    assert taken is not None
    reply = _old_runner(client.path, {"op": "append", "kind": "note", "payload": {},
                                      "expected_seq": None})  # fmt: skip
    assert reply["error"] == {"type": "FencedError", "run_id": host.run.id,
                              "epoch": host.run.epoch, "current": taken.epoch}  # fmt: skip


def test_closing_the_gateway_ends_its_listening_thread(store: Store, tmp_path: Path) -> None:
    """A checkpoint quiesces the gateway and reopens it: each time, the thread that accepted
    calls must end, or a long-lived worker gathers one per checkpoint."""
    run = store.create_run("gateway.flow")
    server = GatewayServer(tmp_path / "g.sock", GatewayService(Host(store, run)).handle)
    before = {t for t in threading.enumerate() if t.name == "torpor-gateway"}
    server.open()
    for _ in range(5):
        assert server.quiesce(timeout=5)
        server.reopen()
    server.close()
    wait_until(
        lambda: not {t for t in threading.enumerate() if t.name == "torpor-gateway"} - before,
        "the gateway's threads to end",
        timeout=10,
    )
