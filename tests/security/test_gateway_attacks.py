"""The gateway grants a sandbox the least it needs: attacks 1, 2, 4, 5, 8 and 9 of issue #15,
each tried for real, each asserted to fail.

End to end, from code in a real snapshot-road sandbox run by a real `torpor worker` (CRIU
required, see tests/_criu_fixtures.py): a replay-road child made of a file the sandbox wrote
(attack 1), a model call to an endpoint of the sandbox's choosing (2), another run's record
and its adoption as a child (5), the gateway socket reached from outside the sandbox, after a
restore (4), a link planted where the worker reads the sandbox's output (8). On a real
`GatewayServer` and unix socket in this process: connections, sizes and times bounded (9).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import _criu_fixtures
from conftest import Cli
from torpor import RunRecord, RunStatus, Store, StoreUnavailableError
from torpor.gateway import GatewayClient, GatewayServer, GatewayService, Reply
from torpor.gateway._ops import Hello
from torpor.testing import ScriptedModelServer, WorkerGroup, reply_text, wait_until

criu = _criu_fixtures.criu  # a fixture, used by name: fails or skips without CRIU

FLOWS = Path(__file__).parent / "gateway_attack_flows.py"
_until = functools.partial(wait_until, timeout=90)


# -- end to end: hostile code in a real sandbox ---------------------------------------------


@pytest.fixture
def workers(cli: Cli, tmp_path: Path) -> Iterator[WorkerGroup]:
    try:
        with WorkerGroup("--lease", "1.5", env=cli.env, logs=tmp_path / "home") as group:
            yield group
    finally:
        cli("doctor", "--cleanup", timeout=120)


def _start(cli: Cli, target: str, args: list[object]) -> str:
    return cli.ok("run", f"{FLOWS}:{target}", json.dumps(args), "--road", "snapshot", "--detach")


def _ended(store: Store, run_id: str, timeout: float = 120) -> RunRecord:
    done: RunRecord = _until(
        lambda: (r := store.get_run(run_id)).status.terminal and r, f"{run_id} to end",
        timeout=timeout,
    )  # fmt: skip
    return done


@pytest.mark.criu
@pytest.mark.timeout(300)
def test_attack_1_a_sandbox_cannot_make_the_worker_import_its_file_on_the_host(
    criu: object, workers: WorkerGroup, cli: Cli, store: Store, tmp_path: Path
) -> None:
    marker = tmp_path / "imported-on-the-host"
    parent_id = _start(cli, "replay_child", [str(marker)])
    workers.start(OPENAI_API_KEY="sk-worker-secret")
    parent = _ended(store, parent_id)
    assert parent.status is RunStatus.COMPLETED, (
        parent.error,
        [e.kind for e in store.read(parent_id)],
    )
    attempt = parent.output
    assert attempt["host_file"].endswith("/evil.py") and Path(attempt["host_file"]).is_file()
    # The child was made, but as the worker decides: a sandboxed run of the parent's own
    # source, where the sandbox's workflow name finds nothing; the file was never imported.
    child = _ended(store, attempt["child"])
    assert not marker.exists(), marker.read_text()
    assert child.parent_id == parent_id
    assert child.road.value == "snapshot" and child.source == parent.source
    assert child.status is RunStatus.FAILED and "attack.evil" in json.dumps(child.error)


@pytest.mark.criu
@pytest.mark.timeout(300)
def test_attack_2_a_sandbox_cannot_send_the_workers_key_to_a_url_of_its_choosing(
    criu: object, workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    heard: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def listen() -> None:  # the attacker's endpoint: records whatever reaches it
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    heard.append(conn.recv(65536))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    attacker = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    with ScriptedModelServer([reply_text("hi from the configured endpoint")]) as model:
        try:
            stolen = _start(cli, "steal_key", [attacker])
            # The endpoint the worker is configured with is the one a sandbox may name.
            allowed = _start(cli, "steal_key", [model.openai_base_url])
            workers.start(OPENAI_API_KEY="sk-worker-secret", OPENAI_BASE_URL=model.openai_base_url)
            refused = _ended(store, stolen)
            answered = _ended(store, allowed)
        finally:
            stop.set()
            thread.join()
            listener.close()
    assert heard == []  # no connection, let alone an Authorization header
    assert refused.status is RunStatus.COMPLETED, refused.error
    assert refused.output.startswith("refused: ModelCallRefusedError: model call refused")
    assert attacker in refused.output and "OPENAI_BASE_URL" in refused.output
    (call,) = [e for e in store.read(stolen) if e.kind == "model_call"]
    assert "model call refused" in call.payload["error"]["message"]  # in the run's log
    assert answered.output == "answered: hi from the configured endpoint", answered.output
    assert len(model.calls) == 1


def _socket_of_ready_sandbox(home: Path) -> Path:
    ready = _until(lambda: next(home.glob("sandboxes/*/workspace/ready"), None), "the flow")
    return ready.parent.parent / "run" / "gateway.sock"


def _raw(path: Path, request: dict[str, object]) -> dict[str, object]:
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)  # the path may be too long
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(f"/proc/self/fd/{folder}/{path.name}")
        finally:
            os.close(folder)
        with contextlib.suppress(BrokenPipeError):  # refused before it was read
            sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data) if data else {}


@pytest.mark.criu
@pytest.mark.timeout(300)
def test_attacks_4_and_5_a_sandbox_reaches_no_other_run_and_no_other_process_its_gateway(
    criu: object, workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    stranger = store.create_run(
        "attack.steal_key", input={"args": ["secret input"], "kwargs": {}}, queue="elsewhere"
    )
    run_id = _start(cli, "other_runs", [stranger.id])
    workers.start("--queue", "default")
    gateway = _socket_of_ready_sandbox(Path(cli.env["TORPOR_HOME"]))
    kinds = [e.kind for e in store.read(run_id)]
    assert "suspended" in kinds and "restored" in kinds  # the sandbox now has a new init
    # Attack 4: a process that is not the sandbox's (here: this test, on the host) reaches
    # the socket. Every request is refused before it is read; nothing changes.
    before = store.get_run(run_id)
    for request in (
        {"op": "read"},
        {"op": "append", "kind": "step", "payload": {"forged": True}},
        {"op": "end", "status": "completed", "output": "forged"},
    ):
        reply = _raw(gateway, request)
        assert "refused" in json.dumps(reply) and "is not in the sandbox" in json.dumps(reply)
    assert store.get_run(run_id).last_seq == before.last_seq
    (gateway.parent.parent / "workspace" / "go").write_text("go")
    done = _ended(store, run_id)
    assert done.status is RunStatus.COMPLETED, done.error
    # Attack 5: from inside, another run is not found, nor adopted as a child; its own
    # record is answered (the sandbox's calls work after the restore).
    tried = done.output["tried"]
    assert tried["get_child"].startswith("refused: RunNotFoundError"), tried
    assert tried["start_child"].startswith("refused: TorporError"), tried
    assert tried["own"] == f"answered: {run_id!r}", tried
    assert done.output["released"] is True
    assert "forged" not in json.dumps([e.payload for e in store.read(run_id)])
    assert store.get_run(stranger.id).status is RunStatus.QUEUED
    assert store.get_run(stranger.id).parent_id is None


@pytest.mark.criu
@pytest.mark.timeout(300)
def test_attack_8_the_worker_follows_no_link_the_sandbox_planted(
    criu: object, workers: WorkerGroup, cli: Cli, store: Store, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("root:the-host-secret:19000:0:99999:7:::\n")
    run_id = _start(cli, "plant_link", [str(secret)])
    workers.start()
    done = _ended(store, run_id, timeout=240)
    assert done.status is RunStatus.FAILED
    died = [e.payload["message"] for e in store.read(run_id) if e.kind == "sandbox_died"]
    died.append(json.dumps(done.error))
    assert len(died) >= 2 and all("(no output: " in message for message in died), died
    assert "the-host-secret" not in json.dumps([e.payload for e in store.read(run_id)])
    assert "the-host-secret" not in json.dumps(done.error)


def test_the_workers_tail_of_a_sandbox_file_opens_no_link_fifo_or_device(
    tmp_path: Path,
) -> None:
    from torpor.runtime.snapshot_road._run import _tail

    run = tmp_path / "box" / "run"
    run.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("the-host-secret\n")
    out = run / "stderr.log"
    out.write_text("".join(f"line {i}\n" for i in range(100)))
    assert _tail(out) == "line 95 | line 96 | line 97 | line 98 | line 99"
    out.unlink()
    out.symlink_to(secret)
    assert _tail(out).startswith("(no output: ") and "secret" not in _tail(out)
    out.unlink()
    os.mkfifo(out)  # opening it to read would block the worker
    assert _tail(out).startswith("(no output: ") and "no regular file" in _tail(out)
    out.unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "stderr.log").write_text("the-host-secret\n")
    run.rmdir()
    run.symlink_to(tmp_path / "elsewhere")  # a link higher up is not followed either
    assert _tail(out).startswith("(no output: ")


# -- attack 9: the worker's resources, on a real gateway server in this process -----------


@dataclass
class Host:
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
def served(store: Store, tmp_path: Path) -> Iterator[tuple[GatewayServer, Host]]:
    run = store.create_run("attack.steal_key", input={"args": ["x"], "kwargs": {}})
    claimed = store.claim_run("w-test", 30, run_id=run.id)
    assert claimed is not None
    host = Host(store, claimed)
    server = GatewayServer(tmp_path / "gateway.sock", GatewayService(host).handle)
    server.open()
    try:
        yield server, host
    finally:
        server.close()


def _connect(server: GatewayServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.path))
    return sock


def _closed_soon(sock: socket.socket, within: float) -> bool:
    """Whether the server closed ``sock`` (after at most a one-line refusal) in time."""
    sock.settimeout(within)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _gateway_threads() -> int:
    return sum(t.name.startswith("torpor-gateway") for t in threading.enumerate())


def test_attack_9_idle_connections_are_capped_and_cost_no_thread_beyond_the_cap(
    served: tuple[GatewayServer, Host], caplog: pytest.LogCaptureFixture
) -> None:
    server, host = served
    caplog.set_level(logging.WARNING, "torpor.gateway")
    held = [_connect(server) for _ in range(200)]
    try:
        wait_until(lambda: server.connections == server.max_connections, "the cap to fill")
        # The 16 first are kept (until their read timeout), the 184 others closed at once.
        closed = sum(_closed_soon(sock, 0.05) for sock in held[server.max_connections :])
        assert closed == 200 - server.max_connections
        assert server.connections == server.max_connections
        assert _gateway_threads() <= server.max_connections + 1  # + the accepting thread
        warnings = [r.getMessage() for r in caplog.records if "its limit" in r.getMessage()]
        assert len(warnings) == 1 and "\n" not in warnings[0]  # once, not 184 times
    finally:
        for sock in held:
            sock.close()
    # The sandbox's own calls go on once its idle connections are gone.
    wait_until(lambda: server.connections == 0, "the held connections to be dropped")
    client = GatewayClient(str(server.path))
    assert client.call(Hello())["run"]["id"] == host.run.id


def test_attack_9_an_idle_or_partial_request_is_dropped_after_the_read_timeout(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = store.create_run("attack.steal_key")
    server = GatewayServer(
        tmp_path / "g.sock", GatewayService(Host(store, run)).handle, read_timeout=0.5
    )
    server.open()
    try:
        idle, partial = _connect(server), _connect(server)
        partial.sendall(b'{"op": "read", "aft')
        started = time.monotonic()
        for sock in (idle, partial):
            sock.settimeout(5)
            reply = sock.recv(65536)
            assert b"none whole within 0.5 s" in reply and reply.count(b"\n") == 1
            assert sock.recv(65536) == b""  # and closed
            sock.close()
        assert time.monotonic() - started < 3
        wait_until(lambda: server.connections == 0, "the connections to be let go", timeout=5)
    finally:
        server.close()
    dropped = [r for r in caplog.records if "no whole request" in r.getMessage()]
    assert len(dropped) == 2 and all(r.exc_info is None for r in dropped)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_attack_9_six_partial_50_mib_messages_are_refused_without_growing_the_worker(
    served: tuple[GatewayServer, Host],
) -> None:
    server, _ = served
    block = b"x" * (1 << 20)
    replies: list[bytes] = []

    def flood() -> None:
        with _connect(server) as sock:
            sock.settimeout(30)
            try:
                for _ in range(50):
                    sock.sendall(block)  # never a newline: a message that never ends
            except OSError:
                pass  # the worker stopped reading and closed: expected
            with contextlib.suppress(OSError):
                replies.append(sock.recv(65536))

    before = _rss_mb()
    floods = [threading.Thread(target=flood) for _ in range(6)]
    for thread in floods:
        thread.start()
    for thread in floods:
        thread.join(60)
    grown = _rss_mb() - before
    assert len(replies) == 6
    assert all(b"is over 4194304 bytes" in r and r.count(b"\n") == 1 for r in replies), replies
    # Six messages of 50 MiB took a worker from 60 to 368 MB; each is dropped at 4 MiB now.
    assert grown < 40, f"the worker grew by {grown:.0f} MB"
    wait_until(lambda: server.connections == 0, "the connections to be let go", timeout=5)


def test_attack_9_a_malformed_request_gets_one_line_and_the_log_no_traceback(
    served: tuple[GatewayServer, Host], caplog: pytest.LogCaptureFixture
) -> None:
    server, host = served
    caplog.set_level(logging.DEBUG, "torpor.gateway")
    for garbage in (b"{not json\n", b"\xff\xfe\n", b"[1]\n", b'{"op": "end", "status": 1}\n'):
        with _connect(server) as sock:
            sock.sendall(garbage)
            sock.settimeout(5)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.count(b"\n") == 1 and b"bad gateway" in reply, reply
    assert caplog.records and all(r.exc_info is None for r in caplog.records)
    assert all("\n" not in r.getMessage() and "Traceback" not in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert store_unchanged(host)


def store_unchanged(host: Host) -> bool:
    run = host.store.get_run(host.run.id)
    return run.status is RunStatus.RUNNING and run.last_seq == 0


def test_attack_9_a_held_connection_does_not_hold_up_a_checkpoint(
    served: tuple[GatewayServer, Host],
) -> None:
    server, _ = served
    idle, partial = _connect(server), _connect(server)
    partial.sendall(b'{"op": "append", "kind": "step", "payl')
    wait_until(lambda: server.connections == 2, "both connections to be taken")
    started = time.monotonic()
    assert server.quiesce(timeout=60)
    took = time.monotonic() - started
    assert took < 2, f"quiescing took {took:.1f} s"
    assert _closed_soon(idle, 2) and _closed_soon(partial, 2)
    idle.close()
    partial.close()
    server.reopen()


def test_terminal_states_are_final_for_a_sandbox(served: tuple[GatewayServer, Host]) -> None:
    server, host = served
    client = GatewayClient(str(server.path))
    from torpor.gateway import GatewayJournal

    journal = GatewayJournal(client, host.run)
    assert journal.end(RunStatus.COMPLETED, output="real")
    assert journal.end(RunStatus.COMPLETED, output="real")  # sent again: answered, no change
    seq = host.store.get_run(host.run.id).last_seq
    for attempt in (
        lambda: journal.append("step", {"pos": 9, "result": "forged"}),
        lambda: journal.end(RunStatus.FAILED, error={"type": "X", "message": "forged"}),
        lambda: journal.add_timer("t", time.time() + 5),
        lambda: journal.safepoint(force=True),
    ):
        with pytest.raises(Exception, match="it has ended"):
            attempt()
    record = host.store.get_run(host.run.id)
    assert (record.status, record.output, record.last_seq) == (RunStatus.COMPLETED, "real", seq)
    assert journal.read()  # reading stays allowed


@pytest.mark.criu
@pytest.mark.timeout(300)
def test_a_sandbox_over_the_workers_memory_limit_is_killed_and_the_run_says_so(
    criu: object, workers: WorkerGroup, cli: Cli, store: Store
) -> None:
    run_id = _start(cli, "hog_memory", [1024])
    workers.start(TORPOR_SANDBOX_MEMORY_BYTES=str(96 << 20))
    done = _ended(store, run_id, timeout=240)
    assert done.status is RunStatus.FAILED
    died = [e.payload["message"] for e in store.read(run_id) if e.kind == "sandbox_died"]
    died.append(done.error["message"])
    expected = "the sandbox was killed: out of memory (limit 96 MiB)"
    assert all(message.startswith(expected) for message in died), died
