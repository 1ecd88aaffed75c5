"""Sandboxes with real CRIU, real namespaces, real processes: launch, checkpoint, restore, fork.

Every test here is marked `criu`; see tests/_criu_fixtures.py for when they skip or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import _criu_fixtures
import torpor.sandbox._checkpoint
import torpor.sandbox._launch
from _criu_fixtures import wait_for
from torpor import Settings
from torpor.sandbox import (
    Checkpoint,
    CheckpointBaseRootError,
    CheckpointBlockedError,
    Criu,
    CriuError,
    CriuNotFoundError,
    Sandbox,
    SandboxError,
    SandboxState,
)

pytestmark = pytest.mark.criu

# Fixtures, used by name.
criu = _criu_fixtures.criu
settings = _criu_fixtures.settings

# A small agent: a counter in memory, a child process on a pipe, a thread, an open file in
# the workspace. Every tick it prints "n child-alive thread-ticks name", writes "n name" to
# the workspace file (opened for writing, not appending: each line lands at the file offset
# held in the process) and the name to /etc/agent-name (the root layer); it exits 7 when
# /workspace/stop appears.
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
    log = open("/workspace/ticks.txt", "w")
    n = 0
    while not os.path.exists("/workspace/stop"):
        n += 1
        child.stdin.write(b"%d\\n" % n); child.stdin.flush()
        echoed = int(child.stdout.readline())
        name = open("/workspace/name").read() if os.path.exists("/workspace/name") else "-"
        print(n, echoed == n, ticks[0] > 0, name, flush=True)
        log.write("%d %s\\n" % (n, name)); log.flush()
        with open("/etc/agent-name.tmp", "w") as f:
            f.write(name)
        os.replace("/etc/agent-name.tmp", "/etc/agent-name")  # never seen half-written
        time.sleep(0.02)
    sys.exit(7)
    """
)


def _numbers(path: Path) -> list[int]:
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


def _commands_in(box: Sandbox) -> list[str]:
    """The command names of the processes in a running sandbox's tree, init included."""
    assert box.pid is not None
    todo, names = [box.pid], []
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return names


def _lines(box: Sandbox) -> int:
    return len(box.stdout_path.read_text().splitlines()) if box.stdout_path.exists() else 0


def test_launch_isolates_the_command(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORPOR_TEST_SECRET", "must-not-leak")
    token = os.urandom(4).hex()
    host_files = [Path(f"/etc/torpor-test-{token}"), Path(f"/usr/torpor-test-{token}"),
                  Path(f"/tmp/torpor-test-{token}")]  # fmt: skip
    new_files = [Path(f"/etc/torpor-new-{token}"), Path(f"/usr/bin/torpor-new-{token}")]
    probe = textwrap.dedent(
        """
        import os, json, sys
        etc, usr, tmp, *new = sys.argv[1:]
        open(etc, "w").write("sandbox")  # change a host file...
        os.remove(usr)  # ...delete one...
        for path in new:  # ...and create new ones, in /etc and /usr
            open(path, "w").write("sandbox")
        open("/workspace/out.txt", "w").write("hello")
        print(json.dumps({
            "pid": os.getpid(), "cwd": os.getcwd(), "dev": sorted(os.listdir("/dev")),
            "secret": os.environ.get("TORPOR_TEST_SECRET"), "extra": os.environ.get("EXTRA"),
            "tmp": os.listdir("/tmp"), "host_tmp_file": os.path.exists(tmp),
            "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        }))
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """
    )
    cmd = ["python3", "-c", probe, *map(str, host_files + new_files)]
    try:
        for path in host_files:
            path.write_text("host")
        with Sandbox.launch(cmd, env={"EXTRA": "1"}, settings=settings) as box:
            assert box.wait(timeout=30) == 3
            assert box.state is SandboxState.EXITED and box.pid is None
            seen = json.loads(box.stdout_path.read_text())
            assert seen["pid"] == 2  # pid 1 is the sandbox's init
            # /proc shows the sandbox's own pid namespace: its init and the command, no more.
            assert seen["procs"] == [1, 2]
            assert seen["cwd"] == "/workspace"
            assert {"null", "zero", "urandom"} <= set(seen["dev"]) and "vda" not in seen["dev"]
            assert seen["secret"] is None and seen["extra"] == "1"
            assert seen["tmp"] == [] and not seen["host_tmp_file"]  # a private /tmp
            assert box.stderr_path.read_text().strip() == "to stderr"
            assert (box.workspace / "out.txt").read_text() == "hello"
            upper = box.directory / "upper"
            assert (upper / f"etc/torpor-test-{token}").read_text() == "sandbox"
            assert (upper / f"usr/bin/torpor-new-{token}").read_text() == "sandbox"
            # The host's files are untouched: same content, none deleted, none created.
            assert [p.read_text() for p in host_files] == ["host"] * 3
            assert not any(p.exists() for p in new_files)
        assert not box.directory.exists()
    finally:
        for path in host_files + new_files:
            path.unlink(missing_ok=True)


class _EndsBeforeTheLauncherLooks(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen that returns only once the sandbox's whole tree has ended and been reaped:
    the launcher then looks at a sandbox whose command (and init) are already gone, the
    race a command that fails at once runs against every launch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wait(timeout=30)


@pytest.mark.parametrize(
    ("cmd", "status"),
    [(["sh", "-c", "kill -TERM $$"], -signal.SIGTERM), (["no-such-command-xyz"], 127)],
    ids=["killed-by-signal", "missing"],
)
def test_a_command_gone_before_the_launcher_looks_reports_its_status(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, cmd: list[str], status: int
) -> None:
    monkeypatch.setattr(torpor.sandbox._launch.subprocess, "Popen", _EndsBeforeTheLauncherLooks)
    with Sandbox.launch(cmd, settings=settings) as box:
        monkeypatch.undo()
        assert box.wait(timeout=30) == status
        assert box.state is (SandboxState.EXITED if status > 0 else SandboxState.KILLED)
        if status == 127:
            assert "no-such-command-xyz" in box.stderr_path.read_text()


def test_a_launch_that_fails_before_its_init_is_ready_leaves_nothing_running(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The launcher gives up at once: its `unshare` and the init it is starting must not run
    # on (the fixture and the process guard check that nothing is left).
    monkeypatch.setattr(torpor.sandbox._launch, "_READY_TIMEOUT", 0.0)
    with pytest.raises(SandboxError, match="did not start in time"):
        Sandbox.launch(["sleep", "60"], settings=settings)
    assert list((settings.home / "sandboxes").iterdir()) == []


# Plants something in place of /run/torpor/exit (the init writes it only when the command
# ends, so after a kill from outside whatever the tree left there stays), then waits.
PLANTER = textwrap.dedent(
    """
    import os, sys, time
    kind, target = sys.argv[1:3]
    exit_file = "/run/torpor/exit"
    if kind == "fifo":
        os.mkfifo(exit_file)
    elif kind == "symlink":
        os.symlink(target, exit_file)
    else:
        open(exit_file, "w").write("0" * 100_000 if kind == "big" else "not a status\\n")
    print("planted", flush=True)
    time.sleep(100)
    """
)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "garbage", "big"])
def test_a_planted_exit_file_is_not_followed_nor_trusted(
    kind: str, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A host file the link points at: its "0" must not become the sandbox's status.
    host_file = tmp_path / "host-status"
    host_file.write_text("0\n")
    box = Sandbox.launch(["python3", "-c", PLANTER, kind, str(host_file)], settings=settings)
    try:
        assert wait_for(lambda: "planted" in box.stdout_path.read_text()), (
            box.stderr_path.read_text()
        )
        assert box.pid is not None
        os.kill(box.pid, signal.SIGKILL)  # the init dies without writing exit
        ended: list[int] = []
        waiter = threading.Thread(target=lambda: ended.append(box.wait(timeout=20)), daemon=True)
        waiter.start()
        waiter.join(30)
        if waiter.is_alive() and kind == "fifo":  # blocked opening the FIFO: let it go
            with contextlib.suppress(OSError):
                os.close(os.open(box.directory / "run" / "exit", os.O_WRONLY | os.O_NONBLOCK))
        assert not waiter.is_alive() and ended == [-signal.SIGKILL]
        assert box.state is SandboxState.KILLED
        assert "counted as killed" in caplog.text and box.id in caplog.text
    finally:
        box.teardown()


def test_the_launchers_home_is_hidden_and_shared_paths_stay_visible(criu: Criu) -> None:
    # A TORPOR_HOME given in Settings (not the environment's) and outside /tmp, which is
    # private anyway; a shared path under /root, which is otherwise emptied.
    token = os.urandom(4).hex()
    home, shared = Path(f"/srv/torpor-home-{token}"), Path(f"/root/torpor-share-{token}")
    home.mkdir(parents=True)
    shared.mkdir()
    try:
        (home / "secret.txt").write_text("host secret\n")
        (shared / "data.txt").write_text("shared data\n")
        own = Settings(home=home, database_url=f"sqlite://{home / 'torpor.db'}",
                       blob_url=Settings.from_env().blob_url)  # fmt: skip
        script = f"cat {shared}/data.txt; cat {home}/secret.txt; ls -A {home}; echo done"
        with Sandbox.launch(["sh", "-c", script], share=[shared], settings=own) as box:
            assert box.wait(timeout=30) == 0, box.stderr_path.read_text()
            out = box.stdout_path.read_text()
            assert out.splitlines()[0] == "shared data" and "done" in out
            assert "host secret" not in out and "secret.txt" not in out
        assert str(home) not in Path("/proc/self/mountinfo").read_text()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


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
            # The open file went on growing from its offset at the dump: every line once, in
            # order, no hole (NUL bytes) and no overwrite, the dumped part unchanged.
            frozen = (checkpoint.directory / "workspace" / "ticks.txt").read_bytes()
            grown = (restored.workspace / "ticks.txt").read_bytes()
            count = grown.count(b"\n")
            assert count > frozen.count(b"\n") >= at_dump - 1 and grown.startswith(frozen)
            assert grown == b"".join(b"%d -\n" % i for i in range(1, count + 1))
            # The child came back too: it is in the restored tree and still echoes (above).
            assert "cat" in _commands_in(restored)
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
        # The root layer too: each fork wrote its name to /etc/agent-name in its own upper
        # layer; the original's upper layer and the checkpoint's copy never saw them.
        for box, name in [(first, "first"), (second, "second"), (original, "-")]:
            agent_name = box.directory / "upper" / "etc" / "agent-name"
            # Written after the tick line that showed the name: it may lag under load.
            assert wait_for(lambda p=agent_name, n=name: p.read_text() == n)
        assert (checkpoint.directory / "upper" / "etc" / "agent-name").read_text() == "-"
        assert not Path("/etc/agent-name").exists()
        # Each fork resumed from the checkpoint's memory, not from scratch.
        assert _numbers(first.stdout_path)[0] == 1
        assert _numbers(first.stdout_path)[-1] > len(frozen_log.splitlines())
    finally:
        for box in boxes:
            box.teardown()


def test_leave_running_keeps_the_original_beside_its_restored_copy(
    settings: Settings, tmp_path: Path
) -> None:
    original = Sandbox.launch(["python3", "-c", AGENT], settings=settings)
    try:
        assert wait_for(lambda: _lines(original) >= 3)
        checkpoint = original.checkpoint(tmp_path / "ck", leave_running=True)
        at_dump = _numbers(checkpoint.directory / "run" / "stdout.log")[-1]
        copy = Sandbox.fork(checkpoint, settings=settings)
        try:
            # Both run at the same time: each counts on from the dump, on its own.
            seen = {b.id: _numbers(b.stdout_path)[-1] for b in (original, copy)}
            assert wait_for(lambda: all(_numbers(b.stdout_path)[-1] >= seen[b.id] + 5
                                        for b in (original, copy)))  # fmt: skip
            assert original.state is SandboxState.RUNNING and copy.state is SandboxState.RUNNING
            for box in (original, copy):
                numbers = _numbers(box.stdout_path)
                assert numbers == list(range(1, len(numbers) + 1)) and numbers[-1] > at_dump
            assert {p: _commands_in(b).count("cat") for p, b in (("o", original), ("c", copy))} == {
                "o": 1, "c": 1}  # fmt: skip
            assert original.pid != copy.pid
        finally:
            copy.teardown()
        assert original.state is SandboxState.RUNNING  # tearing down the copy left it alone
    finally:
        original.teardown()


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
        host.settimeout(0.1)
        with pytest.raises(TimeoutError):  # and nothing reached the test's server
            host.accept()
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


def test_private_network_is_the_default_and_forks_get_their_own(
    settings: Settings, tmp_path: Path
) -> None:
    # A server on port 7000 in a sandbox launched without `network`: checkpointed while it
    # runs on, then forked twice. Each copy gets a network namespace of its own from CRIU,
    # so all three listen on the same port at once, and none of them on the host's.
    server = textwrap.dedent(
        """
        import os, socket
        s = socket.socket(); s.bind(("127.0.0.1", 7000)); s.listen()
        print("listening", flush=True)
        while True:
            conn, _ = s.accept(); conn.sendall(str(os.getpid()).encode()); conn.close()
        """
    )
    ask = "import socket; print(socket.create_connection(('127.0.0.1', 7000)).recv(9).decode())"

    def answer(box: Sandbox) -> str:
        reply = subprocess.run(
            ["nsenter", "-t", str(box.pid), "-n", sys.executable, "-c", ask],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return reply.stdout.strip()

    box = Sandbox.launch(["python3", "-c", server], settings=settings)
    forks: list[Sandbox] = []
    try:
        assert wait_for(lambda: "listening" in box.stdout_path.read_text())
        with pytest.raises(ConnectionRefusedError):  # not on the host's loopback
            socket.create_connection(("127.0.0.1", 7000), timeout=2).close()
        checkpoint = box.checkpoint(tmp_path / "ck", leave_running=True)
        forks = [Sandbox.fork(checkpoint, settings=settings) for _ in range(2)]
        namespaces = {os.readlink(f"/proc/{b.pid}/ns/net") for b in (box, *forks)}
        assert len(namespaces) == 3 and os.readlink("/proc/self/ns/net") not in namespaces
        # The server is pid 2 inside each: every copy answers in its own namespace.
        assert [answer(b) for b in (box, *forks)] == ["2", "2", "2"]
    finally:
        for fork in forks:
            fork.teardown()
        box.teardown()


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
    box = Sandbox.launch(["python3", "-c", client, port], network="host", settings=settings)
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


def _cpu_quota_us(pid: int) -> int:
    """The CFS quota of the cgroup that holds ``pid`` for the cpu controller (-1: none)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            quota = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().split()[0]
            return -1 if quota == "max" else int(quota)
        if "cpu" in controllers.split(","):
            group = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
            return int((group / "cpu.cfs_quota_us").read_text())
    raise LookupError(f"no cpu cgroup for {pid}")


def test_a_cpu_limit_survives_checkpoint_and_restore(settings: Settings, tmp_path: Path) -> None:
    box = Sandbox.launch(["sleep", "100"], cpu_limit=0.5, settings=settings)
    try:
        assert box.pid is not None and _cpu_quota_us(box.pid) == 50_000
        checkpoint = box.checkpoint(tmp_path / "ck")
        assert checkpoint.cpu_limit == 0.5 and Checkpoint.load(checkpoint.directory) == checkpoint
        restored = Sandbox.restore(checkpoint, settings=settings)
        try:
            assert restored.pid is not None
            groups = Path(f"/proc/{restored.pid}/cgroup").read_text()
            assert f"torpor-{restored.id}" in groups
            assert _cpu_quota_us(restored.pid) == 50_000  # the quota, not "max" / -1
        finally:
            restored.teardown()
    finally:
        box.teardown()
    # A checkpoint.json written before the field existed loads, with no CPU limit.
    fields = json.loads((checkpoint.directory / "checkpoint.json").read_text())
    del fields["cpu_limit"]
    (checkpoint.directory / "checkpoint.json").write_text(json.dumps(fields))
    assert Checkpoint.load(checkpoint.directory).cpu_limit is None


def _cgroup_of(proc: Path) -> str:
    try:
        return (proc / "cgroup").read_text()
    except OSError:
        return ""


# Holds one thing CRIU cannot checkpoint (argv[1] says which), counts, and lets go of it when
# /workspace/release appears.
HOLDER = textwrap.dedent(
    """
    import ctypes, os, socket, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    kind = sys.argv[1]
    if kind == "io_uring":
        held = libc.syscall(425, 8, ctypes.create_string_buffer(120))  # io_uring_setup
        assert held >= 0, os.strerror(ctypes.get_errno())
        release = lambda: os.close(held)
    elif kind == "inotify":
        os.makedirs("/opt/watched")  # a directory of the overlay root
        held = libc.inotify_init1(0)
        assert libc.inotify_add_watch(held, b"/opt/watched", 0x100) >= 0
        release = lambda: os.close(held)
    elif kind == "deleted":
        big = open("/tmp/big", "wb"); big.write(b"x" * (3 << 20)); big.flush()
        os.unlink("/tmp/big")
        release = big.close
    else:
        peer = socket.socket(socket.AF_UNIX); peer.connect("/workspace/peer.sock")
        release = peer.close
    n = 0
    while True:
        n += 1
        if release and os.path.exists("/workspace/release"):
            release(); release = None
            print("released", flush=True)
        print(n, flush=True)
        time.sleep(0.02)
    """
)
BLOCKERS = {
    "io_uring": ("an io_uring instance (fd 3)", "close the ring before checkpointing"),
    "inotify": ("an inotify watch on /opt/watched (fd 3)", "remove the watch"),
    "deleted": ("the deleted file /tmp/big (3.0 MiB, open as fd 3)", "ghost_limit=3 << 20"),
    "unix": ("a unix socket (fd 3) connected to", "close the connection before checkpointing"),
}


def _counter(box: Sandbox) -> int:
    return max([int(x) for x in box.stdout_path.read_text().split() if x.isdigit()] or [0])


def _launch_holder(
    kind: str, settings: Settings, tmp_path: Path, network: str = "private"
) -> tuple[Sandbox, socket.socket]:
    if kind == "io_uring" and Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() != "0":
        pytest.skip("io_uring is disabled on this machine")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    peer = socket.socket(socket.AF_UNIX)  # the outside end of the unix socket case
    peer.bind(str(workspace / "peer.sock"))
    peer.listen()
    box = Sandbox.launch(
        ["python3", "-c", HOLDER, kind], workspace=workspace, network=network, settings=settings
    )
    assert wait_for(lambda: _counter(box) >= 3), box.stderr_path.read_text()
    return box, peer


@pytest.mark.parametrize("kind", list(BLOCKERS))
def test_a_blocked_checkpoint_names_process_resource_and_fix(
    kind: str, settings: Settings, tmp_path: Path
) -> None:
    box, peer = _launch_holder(kind, settings, tmp_path)
    accepted = peer.accept()[0] if kind == "unix" else None
    try:
        pid = box.pid
        with pytest.raises(CheckpointBlockedError) as err:
            box.checkpoint(tmp_path / "ck")
        resource, fix = BLOCKERS[kind]
        message = err.value.message
        assert "process 2 (python3) holds " + resource in message, message
        assert fix in message and "the sandbox runs on as it was" in message
        assert err.value.pid == 2 and err.value.command == "python3" and not err.value.log
        if kind == "unix":
            assert f"{tmp_path / 'ws' / 'peer.sock'} outside the sandbox" in message
        assert not (tmp_path / "ck").exists()  # nothing was dumped
        # Untouched: the same tree runs on and makes progress.
        assert box.state is SandboxState.RUNNING and box.pid == pid
        now = _counter(box)
        assert wait_for(lambda: _counter(box) >= now + 3)
        if kind == "deleted":  # the other way out: let CRIU keep the file in the images
            checkpoint = box.checkpoint(tmp_path / "ck", ghost_limit=4 << 20)
            restored = Sandbox.restore(checkpoint, settings=settings)
            try:
                at_dump = _counter(restored)
                assert wait_for(lambda: _counter(restored) >= at_dump + 3)
            finally:
                restored.teardown()
        else:  # let go of it: then the checkpoint succeeds
            (box.workspace / "release").write_text("")
            assert wait_for(lambda: "released" in box.stdout_path.read_text())
            checkpoint = box.checkpoint(tmp_path / "ck")
            assert checkpoint.image_bytes > 0 and box.state is SandboxState.CHECKPOINTED
    finally:
        box.teardown()
        peer.close()
        if accepted is not None:
            accepted.close()


@pytest.mark.parametrize("kind", ["io_uring", "inotify", "deleted"])
def test_criu_refusing_a_dump_gives_the_same_answer(
    kind: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the inspection can miss (a resource taken just before the dump) CRIU refuses;
    # its log is translated into the same error, and the thawed tree runs on.
    monkeypatch.setattr(torpor.sandbox._checkpoint, "find_blockers", lambda pid, limit: [])
    box, peer = _launch_holder(kind, settings, tmp_path)
    try:
        with pytest.raises(CheckpointBlockedError) as err:
            box.checkpoint(tmp_path / "ck")
        message = err.value.message
        assert "process 2 (python3) holds " in message and err.value.log, message
        assert {"io_uring": "io_uring", "inotify": "inotify watch on an overlay",
                "deleted": "deleted file /tmp/big (3.0 MiB)"}[kind] in message  # fmt: skip
        assert Path(err.value.log).exists() and not (tmp_path / "ck").exists()
        assert box.state is SandboxState.RUNNING
        now = _counter(box)
        assert wait_for(lambda: _counter(box) >= now + 3)
    finally:
        box.teardown()
        peer.close()


def test_restore_failure_names_the_cause_and_cleans_up(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CRIU dumps a unix socket to the outside but cannot restore it; with the inspection
    # out of the way, the restore's failure is what the user sees.
    monkeypatch.setattr(torpor.sandbox._checkpoint, "find_blockers", lambda pid, limit: [])
    # On the host's network CRIU sees the peer and dumps the connection as external (in a
    # private one the peer is invisible to it and the dump itself fails).
    box, peer = _launch_holder("unix", settings, tmp_path, network="host")
    try:
        checkpoint = box.checkpoint(tmp_path / "ck")
        with pytest.raises(CriuError, match="unix socket connects to a peer outside") as err:
            Sandbox.restore(checkpoint, settings=settings)
        assert Path(err.value.log).exists() and "restore" in err.value.message
        assert not (settings.home / "sandboxes" / box.id).exists()
    finally:
        box.teardown()
        peer.close()
    workspace = tmp_path / "ws"
    assert workspace.is_dir() and (workspace / "peer.sock").exists()  # not ours to delete


def test_missing_privileges_and_old_criu_are_explained(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root without capabilities, as in an unprivileged container.
    attempt = (
        "from torpor.sandbox import Sandbox, SandboxError\n"
        "try:\n    Sandbox.launch(['true'])\nexcept SandboxError as exc:\n    print(exc.message)"
    )
    env = {**os.environ, "TORPOR_HOME": str(settings.home)}
    out = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", attempt],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "lacks CAP_SYS_ADMIN" in out and "run torpor as root" in out, out
    assert not list((settings.home / "sandboxes").glob("*"))
    # A CRIU too old for this kernel: the checkpoint says so, and the sandbox runs on.
    with Sandbox.launch(["sleep", "100"], settings=settings) as box:
        old = tmp_path / "old-criu"
        old.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
        old.chmod(0o755)
        monkeypatch.setenv("TORPOR_CRIU", str(old))
        with pytest.raises(CriuNotFoundError, match=r"criu 3\.17\.1, older than 4\.2"):
            box.checkpoint(tmp_path / "ck")
        monkeypatch.setenv("TORPOR_CRIU", str(tmp_path / "absent"))
        with pytest.raises(CriuNotFoundError, match="does not run as criu"):
            box.checkpoint(tmp_path / "ck")
        assert box.state is SandboxState.RUNNING and not (tmp_path / "ck").exists()


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


MAPS_A_FILE = """
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
print("mapped", flush=True)
time.sleep(600)
"""


def test_a_restore_over_other_host_files_than_the_checkpoint_had_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    # A file of the base root the process maps, as a library or a venv's extension would be.
    mapped = tmp_path / "mapped.bin"
    mapped.write_bytes(b"x" * 8192)
    cmd = ["python3", "-c", MAPS_A_FILE, str(mapped)]
    box = Sandbox.launch(cmd, share=[tmp_path], settings=settings)
    try:
        assert wait_for(lambda: "mapped" in box.stdout_path.read_text())
        checkpoint = box.checkpoint(tmp_path / "ck")
    finally:
        box.teardown()
    recorded = json.loads((checkpoint.directory / "base-root.json").read_text())
    assert recorded["files"][str(mapped)]["size"] == 8192

    was = mapped.stat().st_mtime_ns
    mapped.write_bytes(b"y" * 12288)  # a deploy changed it
    for make in (Sandbox.restore, Sandbox.fork):
        with pytest.raises(CheckpointBaseRootError, match=f"{mapped} was 8192 bytes") as err:
            make(checkpoint, settings=settings)
        assert err.value.path == str(mapped) and "here it is 12288 bytes" in err.value.message
        assert err.value.for_snapshot("r-1.s2.abc").message.startswith("snapshot r-1.s2.abc was")
    assert list((settings.home / "sandboxes").iterdir()) == []  # CRIU was never asked

    mapped.write_bytes(b"x" * 8192)  # the same file again: it comes back
    os.utime(mapped, ns=(was, was))
    with Sandbox.restore(checkpoint, settings=settings) as again:
        assert again.state is SandboxState.RUNNING
