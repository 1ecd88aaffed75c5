"""A sandbox is cut off from the host's network and dies with the process that supervises it.

Attacks of issue #15 tried for real against real sandboxes (CRIU required, see
tests/_criu_fixtures.py): the host's loopback services (a database, `torpor server`) reached
from inside, a host port squatted from inside, and a sandbox running on unsupervised after its
worker was SIGKILLed, launched or restored. Also the cgroup limits: a busy loop held to its
CPU share, and the limit a killed sandbox hit named by `limits_hit`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import _criu_fixtures
from _criu_fixtures import wait_for
from torpor import Settings
from torpor.sandbox import Sandbox, SandboxState, alive, find_orphans, process_start_time
from torpor.sandbox import remove_orphans as remove_orphaned

pytestmark = pytest.mark.criu

# Fixtures, used by name.
criu = _criu_fixtures.criu
settings = _criu_fixtures.settings

# Appends a counter to /workspace/count every 50 ms: work that must stop with its worker.
COUNTER = textwrap.dedent(
    """
    import time
    n = 0
    while True:
        n += 1
        with open("/workspace/count", "a") as f:
            f.write("%d\\n" % n)
        time.sleep(0.05)
    """
)

# A worker stand-in: a process that launches (or restores) a sandbox from a worker thread,
# as workers do, prints its id and pid, and keeps it until it is SIGKILLed.
OWNER = textwrap.dedent(
    """
    import json, sys, threading, time
    from torpor.sandbox import Checkpoint, Sandbox
    mode, arg = sys.argv[1:3]
    boxes = []
    if mode == "launch-and-die":  # SIGKILLed while the launch waits for the command to start
        import os, signal, time as real_time
        import torpor.sandbox._launch
        class DyingClock:
            perf_counter, monotonic = real_time.perf_counter, real_time.monotonic
            def sleep(seconds):
                os.kill(os.getpid(), signal.SIGKILL)
        torpor.sandbox._launch.time = DyingClock
        mode = "launch"
    def start():
        if mode == "launch":
            boxes.append(Sandbox.launch(["python3", "-c", arg], workspace=sys.argv[3]))
        else:
            boxes.append(Sandbox.restore(Checkpoint.load(arg)))
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    box = boxes[0]
    print(json.dumps({"id": box.id, "pid": box.pid, "workspace": str(box.workspace)}), flush=True)
    time.sleep(600)
    """
)


def _count(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def owner_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "TORPOR_HOME": str(settings.home)}  # TORPOR_CRIU: set by `criu`


@pytest.fixture
def cleanup(settings: Settings) -> Iterator[None]:
    """After the test: what a killed owner left (overlays, cgroups) is removed, as the next
    worker's orphan clean-up does."""
    yield
    remove_orphaned(find_orphans(settings))


def _kill_owner_and_measure(owner: subprocess.Popen[str], count_file: Path) -> dict[str, float]:
    """SIGKILL the owner; return how long its sandbox's init took to go and the counter's
    growth after that."""
    assert owner.stdout is not None
    info = json.loads(owner.stdout.readline())
    pid, started = info["pid"], process_start_time(info["pid"])
    assert alive(pid, started)
    watchers = [c for c in _children(owner.pid) if "_watch.py" in _cmdline(c)]
    assert wait_for(lambda: _count(count_file) >= 3)
    before = _count(count_file)
    owner.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    owner.wait()
    owner.stdout.close()
    assert wait_for(lambda: not alive(pid, started), timeout=5), "the sandbox runs on"
    gone = time.monotonic() - killed
    at_end = _count(count_file)
    time.sleep(0.5)  # ten ticks of the counter, had it survived
    assert _count(count_file) == at_end, "the counter still grows"
    assert len(watchers) == 1  # one per sandbox, a child of the owner; it ends too
    assert wait_for(lambda: not alive(watchers[0], process_start_time(watchers[0])), timeout=5)
    return {"gone": gone, "ticks_after_kill": at_end - before}


@pytest.mark.usefixtures("cleanup")
def test_a_launched_sandbox_dies_with_its_owner(
    settings: Settings, owner_env: dict[str, str], tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, "launch", COUNTER, str(workspace)],
        env=owner_env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    measured = _kill_owner_and_measure(owner, workspace / "count")
    assert measured["gone"] < 1.0, measured  # the watcher's SIGKILL, not a clean-up later
    (orphan,) = find_orphans(settings)  # its files wait for the next worker's clean-up
    assert orphan.running_pid is None


@pytest.mark.usefixtures("cleanup")
def test_a_restored_sandbox_dies_with_its_owner(
    settings: Settings, owner_env: dict[str, str], tmp_path: Path
) -> None:
    box = Sandbox.launch(["python3", "-c", COUNTER], settings=settings)
    try:
        assert wait_for(lambda: _count(box.workspace / "count") >= 2)
        checkpoint = box.checkpoint(tmp_path / "ck")
    finally:
        box.teardown()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, "restore", str(checkpoint.directory)],
        env=owner_env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    restored_workspace = settings.home / "sandboxes" / checkpoint.sandbox_id / "workspace"
    measured = _kill_owner_and_measure(owner, restored_workspace / "count")
    assert measured["gone"] < 1.0, measured
    (orphan,) = find_orphans(settings)
    assert orphan.sandbox_id == checkpoint.sandbox_id and orphan.running_pid is None


@pytest.mark.usefixtures("cleanup")
def test_a_sandbox_whose_owner_dies_mid_launch_never_runs_on(
    settings: Settings, owner_env: dict[str, str], tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, "launch-and-die", COUNTER, str(workspace)],
        env=owner_env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    assert owner.wait(timeout=30) == -signal.SIGKILL  # after `unshare` ran, before the command
    (directory,) = (settings.home / "sandboxes").iterdir()

    def running() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    launcher = str(directory) in (entry / "cmdline").read_text()
                    nspid = [x for x in (entry / "status").read_text().splitlines()
                             if x.startswith("NSpid:")]  # fmt: skip
                    inside = (
                        nspid
                        and len(nspid[0].split()) > 2
                        and (f"upperdir={directory}/" in (entry / "mountinfo").read_text())
                    )
                    if launcher or inside:
                        found.append(int(entry.name))
        return found

    assert wait_for(lambda: not running(), timeout=5), running()
    time.sleep(0.5)
    assert not running() and _count(workspace / "count") == 0


def test_teardown_ends_the_watcher_and_a_finished_sandbox_leaves_none(settings: Settings) -> None:
    def watchers() -> list[int]:
        return [c for c in _children(os.getpid()) if "_watch.py" in _cmdline(c)]

    before = set(watchers())
    box = Sandbox.launch(["sleep", "60"], settings=settings)
    try:
        ours = set(watchers()) - before
        assert len(ours) == 1
    finally:
        box.teardown()
    assert not ours & set(watchers())
    with Sandbox.launch(["true"], settings=settings) as short:
        assert short.wait(timeout=10) == 0
        assert not set(watchers()) - before  # reaped when the sandbox's end was seen


# Tries the host's loopback service, then one on the host's own address; prints the outcomes.
PROBE = textwrap.dedent(
    """
    import json, socket, sys
    results = {}
    for name, host in (("loopback", "127.0.0.1"), ("address", sys.argv[2])):
        try:
            socket.create_connection((host, int(sys.argv[1])), timeout=2).close()
            results[name] = "connected"
        except OSError as exc:
            results[name] = type(exc).__name__ + ": " + (exc.strerror or str(exc))
    squat = socket.socket(); squat.bind(("127.0.0.1", int(sys.argv[3]))); squat.listen()
    results["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    print(json.dumps(results), flush=True)
    import time; time.sleep(60)
    """
)


def _host_address() -> str:
    """An address of this host that is not loopback (what a sandbox could dial instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))  # no packet is sent: only a route is chosen
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    return str(address) if address != "0.0.0.0" else "127.0.0.1"


@pytest.mark.parametrize("network", ["private", "host"])
def test_the_hosts_network_is_out_of_reach_by_default(settings: Settings, network: str) -> None:
    address = _host_address()
    server = socket.socket()  # stands for PostgreSQL or `torpor server` on the host
    server.bind(("0.0.0.0", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    with socket.socket() as free:  # a port the sandbox will try to take from the host
        free.bind(("127.0.0.1", 0))
        squat_port = free.getsockname()[1]
    args = ["python3", "-c", PROBE, str(port), address, str(squat_port)]
    kwargs = {} if network == "private" else {"network": "host"}
    with Sandbox.launch(args, settings=settings, **kwargs) as box:  # type: ignore[arg-type]
        assert wait_for(lambda: box.stdout_path.read_text().strip(), timeout=15), (
            box.stderr_path.read_text()
        )
        results = json.loads(box.stdout_path.read_text())
        accepted = []
        for _ in range(2):
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                break
        mine = socket.socket()
        try:
            mine.bind(("127.0.0.1", squat_port))  # the host's port is still the host's
            squatted = False
        except OSError:
            squatted = True
        finally:
            mine.close()
        for conn in accepted:
            conn.close()
    server.close()
    if network == "private":
        assert results["interfaces"] == ["lo"]
        assert results["loopback"].startswith("ConnectionRefusedError"), results
        assert "unreachable" in results["address"].lower(), results
        assert accepted == [] and not squatted
    else:  # the control: asked for, the host's network is there
        assert results["loopback"] == "connected" and len(accepted) >= 1
        assert squatted


def test_a_bad_network_mode_is_refused(settings: Settings) -> None:
    from torpor.sandbox import SandboxError

    with pytest.raises(SandboxError, match=r"network='bridge' is no network mode"):
        Sandbox.launch(["true"], network="bridge", settings=settings)  # type: ignore[arg-type]


BUSY = textwrap.dedent(
    """
    import time
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < 1.5:
        pass
    print(round((time.process_time() - cpu) / (time.monotonic() - wall), 3), flush=True)
    """
)


def test_a_busy_loop_gets_its_cpu_share_and_the_throttling_is_reported(settings: Settings) -> None:
    with Sandbox.launch(["python3", "-c", BUSY], cpu_limit=0.2, settings=settings) as box:
        assert box.wait(timeout=30) == 0, box.stderr_path.read_text()
        share = float(box.stdout_path.read_text())
        # 0.2 of a CPU; a correctness bound (the loop alone would take a whole one).
        assert share < 0.4, share
        hits = box.limits_hit()
        assert [h.resource for h in hits] == ["cpu"] and hits[0].events >= 5, hits
        assert "CPU limit reached (limit 0.2 CPUs)" in str(hits[0])


def test_the_limit_a_killed_sandbox_hit_is_named(settings: Settings) -> None:
    hog = "b = bytearray(256 << 20); print('allocated', flush=True)"
    with Sandbox.launch(["python3", "-c", hog], memory_limit=64 << 20, settings=settings) as box:
        assert box.wait(timeout=30) == -signal.SIGKILL and box.state is SandboxState.KILLED
        (hit,) = box.limits_hit()
        assert hit.resource == "memory" and hit.fatal and hit.events >= 1
        assert str(hit).startswith("out of memory (limit 64 MiB): the kernel killed a process")
    assert box.limits_hit() == []  # torn down: nothing left to read
    forker = textwrap.dedent(
        """
        import subprocess
        children = []
        for _ in range(20):
            try:
                children.append(subprocess.Popen(["sleep", "30"]))
            except OSError:
                pass
        print(len(children), flush=True)
        for child in children:
            child.kill(); child.wait()
        """
    )
    with Sandbox.launch(["python3", "-c", forker], pids_limit=6, settings=settings) as box:
        assert box.wait(timeout=30) == 0, box.stderr_path.read_text()
        assert box.stdout_path.read_text().split() == ["4"]  # 6 = init + python + 4
        (hit,) = box.limits_hit()
        assert hit.resource == "pids" and not hit.fatal and hit.events >= 16
        assert str(hit).startswith("too many processes (limit 6): ")
    with Sandbox.launch(["true"], memory_limit=64 << 20, settings=settings) as box:
        box.wait(timeout=10)
        assert box.limits_hit() == []
