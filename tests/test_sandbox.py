"""Sandboxes with real CRIU, real namespaces, real processes: launch, checkpoint, restore, fork.

Every test here is marked `criu`; see tests/_criu_fixtures.py for when they skip or fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import _criu_fixtures
from _criu_fixtures import wait_for
from torpor import Settings
from torpor.sandbox import Checkpoint, CriuError, Sandbox, SandboxError, SandboxState

pytestmark = pytest.mark.criu

# Fixtures, used by name.
criu = _criu_fixtures.criu
settings = _criu_fixtures.settings

# A small agent: a counter in memory, a child process on a pipe, a thread, an open file in
# the workspace. Every tick it prints "n child-alive thread-ticks" and appends to a workspace
# file; it exits 7 when /workspace/stop appears.
AGENT = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ticks = [0]
    def tick():
        while True:
            ticks[0] += 1
            time.sleep(0.01)
    threading.Thread(target=tick, daemon=True).start()
    log = open("/workspace/ticks.txt", "a")
    n = 0
    while not os.path.exists("/workspace/stop"):
        n += 1
        child.stdin.write(b"%d\\n" % n); child.stdin.flush()
        echoed = int(child.stdout.readline())
        name = open("/workspace/name").read() if os.path.exists("/workspace/name") else "-"
        print(n, echoed == n, ticks[0] > 0, name, flush=True)
        log.write("%d %s\\n" % (n, name)); log.flush()
        time.sleep(0.02)
    sys.exit(7)
    """
)


def _numbers(path: Path) -> list[int]:
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


def _lines(box: Sandbox) -> int:
    return len(box.stdout_path.read_text().splitlines()) if box.stdout_path.exists() else 0


def test_launch_isolates_the_command(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORPOR_TEST_SECRET", "must-not-leak")
    probe = textwrap.dedent(
        """
        import os, json, sys
        open("/etc/torpor-sandbox-probe", "w").write("x")
        open("/workspace/out.txt", "w").write("hello")
        print(json.dumps({
            "pid": os.getpid(), "cwd": os.getcwd(), "dev": sorted(os.listdir("/dev")),
            "secret": os.environ.get("TORPOR_TEST_SECRET"), "extra": os.environ.get("EXTRA"),
            "tmp": os.listdir("/tmp"),
        }))
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """
    )
    with Sandbox.launch(["python3", "-c", probe], env={"EXTRA": "1"}, settings=settings) as box:
        assert box.wait(timeout=30) == 3
        assert box.state is SandboxState.EXITED and box.pid is None
        seen = __import__("json").loads(box.stdout_path.read_text())
        assert seen["pid"] == 2  # pid 1 is the sandbox's init
        assert seen["cwd"] == "/workspace"
        assert {"null", "zero", "urandom"} <= set(seen["dev"]) and "sda" not in seen["dev"]
        assert seen["secret"] is None and seen["extra"] == "1"
        assert seen["tmp"] == []  # a private /tmp, not the host's
        assert box.stderr_path.read_text().strip() == "to stderr"
        assert (box.workspace / "out.txt").read_text() == "hello"
        assert (box.directory / "upper" / "etc" / "torpor-sandbox-probe").exists()
        assert not Path("/etc/torpor-sandbox-probe").exists()  # the host's root is untouched
    assert not box.directory.exists()


def test_exit_by_signal_and_missing_command(settings: Settings) -> None:
    with Sandbox.launch(["sh", "-c", "kill -TERM $$"], settings=settings) as box:
        assert box.wait(timeout=30) == -signal.SIGTERM
    with Sandbox.launch(["no-such-command-xyz"], settings=settings) as box:
        assert box.wait(timeout=30) == 127
        assert "no-such-command-xyz" in box.stderr_path.read_text()


def test_checkpoint_and_restore_resume_memory_children_and_files(
    settings: Settings, tmp_path: Path
) -> None:
    box = Sandbox.launch(["python3", "-c", AGENT], settings=settings)
    try:
        assert wait_for(lambda: _lines(box) >= 5)
        old_pid = box.pid
        assert old_pid is not None
        checkpoint = box.checkpoint(tmp_path / "ck")
        assert box.state is SandboxState.CHECKPOINTED and box.pid is None
        assert not os.path.exists(f"/proc/{old_pid}")  # stopped: it holds no memory
        assert checkpoint.image_bytes > 1_000_000 and checkpoint.dump_seconds > 0
        assert checkpoint.layer_bytes > 0 and checkpoint.layers_seconds > 0
        assert Checkpoint.load(tmp_path / "ck") == checkpoint
        at_dump = _numbers(box.stdout_path)[-1]
        assert _numbers(checkpoint.directory / "run" / "stdout.log")[-1] == at_dump

        restored = Sandbox.restore(checkpoint, settings=settings)
        try:
            assert restored.id == box.id and restored.state is SandboxState.RUNNING
            assert wait_for(lambda: _numbers(restored.stdout_path)[-1] >= at_dump + 5)
            numbers = _numbers(restored.stdout_path)
            # The counter went on from memory: no restart from 1, no gap, no repeat.
            assert numbers == list(range(1, len(numbers) + 1))
            assert all(line.split()[1:3] == ["True", "True"] for line in
                       restored.stdout_path.read_text().splitlines())  # fmt: skip
            assert _numbers(restored.workspace / "ticks.txt") == numbers[: len(
                _numbers(restored.workspace / "ticks.txt"))]  # fmt: skip
            (restored.workspace / "stop").write_text("")
            assert restored.wait(timeout=30) == 7  # its exit status reaches the restorer
            assert restored.state is SandboxState.EXITED
        finally:
            restored.teardown()
    finally:
        box.teardown()


def test_fork_gives_independent_copies(settings: Settings, tmp_path: Path) -> None:
    boxes = [Sandbox.launch(["python3", "-c", AGENT], settings=settings)]
    try:
        original = boxes[0]
        assert wait_for(lambda: _lines(original) >= 3)
        checkpoint = original.checkpoint(tmp_path / "ck", leave_running=True)
        frozen_log = (checkpoint.directory / "workspace" / "ticks.txt").read_text()
        assert original.state is SandboxState.RUNNING
        with pytest.raises(SandboxError, match="still runs"):
            Sandbox.restore(checkpoint, settings=settings)
        boxes += [Sandbox.fork(checkpoint, settings=settings) for _ in range(2)]
        first, second = boxes[1], boxes[2]
        assert len({b.id for b in boxes}) == 3 and len({b.pid for b in boxes}) == 3
        (first.workspace / "name").write_text("first")
        (second.workspace / "name").write_text("second")
        for box, name in [(first, "first"), (second, "second")]:
            ticks = box.workspace / "ticks.txt"
            assert wait_for(lambda t=ticks, n=name: f" {n}\n" in t.read_text())
        assert wait_for(lambda: _lines(original) >= 10)
        assert all(b.state is SandboxState.RUNNING for b in boxes)
        first_log = (first.workspace / "ticks.txt").read_text()
        assert "second" not in first_log and first_log.startswith(frozen_log)
        assert "first" not in (second.workspace / "ticks.txt").read_text()
        assert "first" not in (original.workspace / "ticks.txt").read_text()
        assert (checkpoint.directory / "workspace" / "ticks.txt").read_text() == frozen_log
        # Each fork resumed from the checkpoint's memory, not from scratch.
        assert _numbers(first.stdout_path)[0] == 1
        assert _numbers(first.stdout_path)[-1] > len(frozen_log.splitlines())
    finally:
        for box in boxes:
            box.teardown()


def test_private_network_survives_restore(settings: Settings, tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import socket, sys, time
        print(sorted(name for _, name in socket.if_nameindex()), flush=True)
        server = socket.socket(); server.bind(("127.0.0.1", 7000)); server.listen()
        try:
            socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
            print("reached the host", flush=True)
        except OSError:
            print("host unreachable", flush=True)
        while True:
            conn, _ = server.accept(); conn.sendall(b"alive"); conn.close()
        """
    )
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    port = str(host.getsockname()[1])
    box = Sandbox.launch(["python3", "-c", probe, port], network=False, settings=settings)
    try:
        assert wait_for(lambda: "unreachable" in box.stdout_path.read_text()
                        or "reached" in box.stdout_path.read_text())  # fmt: skip
        assert box.stdout_path.read_text().splitlines() == ["['lo']", "host unreachable"]
        restored = Sandbox.restore(box.checkpoint(tmp_path / "ck"), settings=settings)
        try:
            assert restored.pid is not None
            ask = "import socket; print(socket.create_connection(('127.0.0.1', 7000)).recv(9))"
            # The restored listener answers inside its own network namespace.
            reply = subprocess.run(
                ["nsenter", "-t", str(restored.pid), "-n", sys.executable, "-c", ask],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            assert reply.stdout.strip() == "b'alive'"
        finally:
            restored.teardown()
    finally:
        box.teardown()
        host.close()


def test_restored_tcp_connection_reads_eof_and_reconnects(
    settings: Settings, tmp_path: Path
) -> None:
    client = textwrap.dedent(
        """
        import socket, sys, time
        while True:
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            print("connected", flush=True)
            while s.recv(100):
                pass
            print("eof", flush=True)
            time.sleep(0.05)
        """
    )
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    serving = threading.Thread(target=serve)
    serving.start()
    port = str(server.getsockname()[1])
    box = Sandbox.launch(["python3", "-c", client, port], settings=settings)
    try:
        assert wait_for(lambda: len(accepted) == 1)
        restored = Sandbox.restore(box.checkpoint(tmp_path / "ck"), settings=settings)
        try:
            assert wait_for(lambda: len(accepted) == 2)  # it noticed, and connected again
            assert restored.stdout_path.read_text().split() == ["connected", "eof", "connected"]
        finally:
            restored.teardown()
    finally:
        box.teardown()
        stop.set()
        serving.join()
        server.close()
        for conn in accepted:
            conn.close()


def test_limits_apply_and_follow_a_fork(settings: Settings, tmp_path: Path) -> None:
    hog = "b = bytearray(256 << 20); print('allocated', flush=True)"
    with Sandbox.launch(["python3", "-c", hog], memory_limit=64 << 20, settings=settings) as box:
        assert box.wait(timeout=30) == -signal.SIGKILL  # the OOM killer, inside the cgroup
        assert box.state is SandboxState.KILLED and "allocated" not in box.stdout_path.read_text()
    forker = textwrap.dedent(
        """
        import subprocess, time
        children = []
        for _ in range(40):
            try:
                children.append(subprocess.Popen(["sleep", "100"]))
            except OSError:
                pass
        print("spawned", len(children), flush=True)
        time.sleep(100)
        """
    )
    box = Sandbox.launch(["python3", "-c", forker], pids_limit=10, settings=settings)
    try:
        assert wait_for(lambda: "spawned" in box.stdout_path.read_text())
        assert box.stdout_path.read_text().split() == ["spawned", "8"]  # 10 = init + agent + 8
        checkpoint = box.checkpoint(tmp_path / "ck", leave_running=True)
        forked = Sandbox.fork(checkpoint, settings=settings)
        try:
            assert forked.pid is not None
            groups = Path(f"/proc/{forked.pid}/cgroup").read_text()
            assert f"torpor-{forked.id}" in groups and f"torpor-{box.id}" not in groups
            count = sum(1 for _ in (p for p in Path("/proc").iterdir() if p.name.isdigit()
                        and f"torpor-{box.id}" in _cgroup_of(p)))  # fmt: skip
            assert count == 10
        finally:
            forked.teardown()
    finally:
        box.teardown()


def _cgroup_of(proc: Path) -> str:
    try:
        return (proc / "cgroup").read_text()
    except OSError:
        return ""


def test_restore_failure_names_the_cause_and_cleans_up(settings: Settings, tmp_path: Path) -> None:
    holder = textwrap.dedent(
        """
        import socket, time
        s = socket.socket(socket.AF_UNIX); s.connect("/workspace/peer.sock")
        print("connected", flush=True)
        time.sleep(600)
        """
    )
    workspace = tmp_path / "ws"
    workspace.mkdir()
    peer = socket.socket(socket.AF_UNIX)
    peer.bind(str(workspace / "peer.sock"))
    peer.listen()
    box = Sandbox.launch(["python3", "-c", holder], workspace=workspace, settings=settings)
    try:
        assert wait_for(lambda: "connected" in box.stdout_path.read_text())
        try:
            checkpoint = box.checkpoint(tmp_path / "ck")
        except CriuError as exc:  # refused at dump time: also a clear answer
            assert "unix socket" in exc.message and exc.log.endswith("dump.log")
            assert box.state is SandboxState.RUNNING  # a failed dump leaves the tree running
            return
        with pytest.raises(CriuError, match="unix socket connects to a peer outside") as err:
            Sandbox.restore(checkpoint, settings=settings)
        assert Path(err.value.log).exists() and "restore" in err.value.message
        assert not (settings.home / "sandboxes" / box.id).exists()
    finally:
        box.teardown()
        peer.close()
    assert workspace.is_dir() and (workspace / "peer.sock").exists()  # not ours to delete


def test_bad_requests_get_clear_errors(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="no command given"):
        Sandbox.launch([], settings=settings)
    with pytest.raises(SandboxError, match="no readable checkpoint"):
        Checkpoint.load(tmp_path)
    with pytest.raises(SandboxError, match=r"workspace .* is no directory"):
        Sandbox.launch(["true"], workspace=tmp_path / "missing", settings=settings)
    with Sandbox.launch(["sleep", "100"], settings=settings) as box:
        (tmp_path / "taken").mkdir()
        with pytest.raises(SandboxError, match="already exists"):
            box.checkpoint(tmp_path / "taken")
        box.kill()
        assert box.state is SandboxState.KILLED and box.returncode == -signal.SIGKILL
        with pytest.raises(SandboxError, match="is killed, not running"):
            box.checkpoint(tmp_path / "ck")
    assert list((settings.home / "sandboxes").iterdir()) == []
