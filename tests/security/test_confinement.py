"""What runs inside a sandbox is confined: it sees no secrets of the host's filesystem, holds
no capability, runs as an unprivileged user under ``no_new_privs`` and a seccomp filter.

Attacks 3 and 7 of issue #15, tried for real from inside real sandboxes (CRIU required, see
tests/_criu_fixtures.py): a probe program inside tries each one and reports the outcome
(errno name, or "ok"), and each test asserts one attack failed. The probe runs once in the
sandbox as launched and again in the same process after a CRIU checkpoint and a restore, a
lazy restore and a fork: confinement is part of what CRIU restores, and must survive it.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import _criu_fixtures
import torpor
from _criu_fixtures import wait_for
from torpor import Settings, TorporError
from torpor.sandbox import Checkpoint, Criu, Sandbox

pytestmark = pytest.mark.criu

criu = _criu_fixtures.criu  # fixture, used by name

# Waits for /workspace/go-<round>, then tries every attack and prints one JSON line
# {"round": n, name: outcome}; outcome is "ok" when the attack worked, else the errno name.
PROBE = textwrap.dedent(
    """
    import ctypes, errno, json, os, platform, struct, subprocess, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    NR = {"x86_64": {"open_by_handle_at": 304, "name_to_handle_at": 303, "keyctl": 250,
                     "bpf": 321, "unshare": 272, "ptrace": 101, "getpid": 39, "clone": 56},
          "aarch64": {"open_by_handle_at": 265, "name_to_handle_at": 264, "keyctl": 219,
                      "bpf": 280, "unshare": 97, "ptrace": 117, "getpid": 172, "clone": 220},
          }[platform.machine()]

    def outcome(result):
        return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]

    def attempt(action):
        try:
            action()
            return "ok"
        except OSError as exc:
            return errno.errorcode[exc.errno]

    def status(pid):
        fields = dict(line.split(":", 1) for line in open("/proc/%s/status" % pid))
        return {k: fields[k].split()[0] for k in ("Uid", "CapInh", "CapPrm", "CapEff",
                "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}

    def forged_handle():
        # The "shocker" attack: a handle naming inode 2 (the root directory of an ext4
        # filesystem), opened through any descriptor on that filesystem (the workspace).
        mount_fd = os.open("/workspace", os.O_RDONLY | os.O_DIRECTORY)
        handle = struct.pack("Ii", 8, 1) + struct.pack("II", 2, 0)  # FILEID_INO32_GEN
        fd = libc.syscall(NR["open_by_handle_at"], mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY)
        if fd < 0:
            return outcome(fd)
        return "ok: " + ",".join(sorted(os.listdir("/proc/self/fd/%d" % fd))[:5])

    def name_to_handle():
        buf = ctypes.create_string_buffer(struct.pack("Ii", 128, 0) + bytes(128))
        mount_id = ctypes.c_int()
        return outcome(libc.syscall(NR["name_to_handle_at"], -100, b"/workspace", buf,
                                    ctypes.byref(mount_id), 0))

    def stat(path):
        return attempt(lambda: os.stat(path))

    def mount_cgroup():
        os.makedirs("/tmp/cg", exist_ok=True)
        return outcome(libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, b"memory"))

    def i386_syscall():
        # getpid through the i386 ABI (int 0x80), from machine code in a child process.
        if platform.machine() != "x86_64":
            return "killed by signal 31"  # no such second ABI to try
        code = ("import ctypes, mmap; m = mmap.mmap(-1, 4096, prot=7); "
                "m.write(bytes.fromhex('b814000000cd80c3')); "
                "print(ctypes.CFUNCTYPE(ctypes.c_int)("
                "ctypes.addressof(ctypes.c_char.from_buffer(m)))())")
        rc = subprocess.run([sys.executable, "-c", code], capture_output=True).returncode
        return "killed by signal %d" % -rc if rc < 0 else "exit %d" % rc

    hidden = json.loads(sys.argv[1])
    print("waiting", flush=True)
    for n in range(10):
        while not os.path.exists("/workspace/go-%d" % n):
            time.sleep(0.01)
        seen = {"round": n, "self": status("self"), "reaper": status(1)}
        seen.update({"stat " + label: stat(path) for label, path in hidden.items()})
        seen["import torpor"] = attempt(lambda: __import__("torpor"))
        seen["read another user's 0600 file"] = attempt(lambda: open("/workspace/secret").read())
        seen["open_by_handle_at"] = forged_handle()
        seen["name_to_handle_at"] = name_to_handle()
        seen["write core_pattern"] = attempt(lambda: open("/proc/sys/kernel/core_pattern", "w"))
        seen["write sysrq-trigger"] = attempt(lambda: open("/proc/sysrq-trigger", "w"))
        seen["read kcore"] = attempt(lambda: open("/proc/kcore", "rb").read(1))
        seen["mount cgroup"] = mount_cgroup()
        seen["ptrace the reaper"] = outcome(libc.syscall(NR["ptrace"], 16, 1, 0, 0))
        seen["open the reaper's memory"] = attempt(lambda: open("/proc/1/mem", "rb"))
        seen["keyctl"] = outcome(libc.syscall(NR["keyctl"], 0, -4, 0))
        seen["bpf"] = outcome(libc.syscall(NR["bpf"], 0, 0, 0))
        seen["x32 syscall"] = outcome(libc.syscall(0x40000000 | NR["getpid"]))
        seen["i386 syscall"] = i386_syscall()
        seen["the host's System V shared memory"] = outcome(libc.shmget(int(sys.argv[2]), 0, 0))
        # Last: a user namespace, once made, would change what the attacks above may do.
        child = libc.syscall(NR["clone"], 0x10000000 | 17, 0, 0, 0, 0)  # NEWUSER | SIGCHLD
        if child == 0:
            os._exit(0)  # the copy, made as fork makes one
        seen["clone into a user namespace"] = outcome(child)
        seen["unshare user namespace"] = outcome(libc.syscall(NR["unshare"], 0x10000000))
        print(json.dumps(seen), flush=True)
    """
)
STAGES = ("launched", "restored", "lazily restored", "forked")


def _result(box: Sandbox, round_: int) -> dict[str, object]:
    secret = box.workspace / "secret"
    secret.write_text("another user's secret")
    secret.chmod(0o600)
    os.chown(secret, 12345, 12345)
    (box.workspace / f"go-{round_}").write_text("")

    def found() -> dict[str, object] | None:
        for line in box.stdout_path.read_text().splitlines():
            if line.startswith("{") and json.loads(line)["round"] == round_:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    assert wait_for(found, timeout=30), (
        f"no result from the {round_} round: {box.stderr_path.read_text()[-2000:]}"
    )
    seen = found()
    assert seen is not None
    return seen


@pytest.fixture(scope="module")
def seen(criu: Criu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """The probe's reports for each of `STAGES`. Its TORPOR_HOME is outside /tmp (which
    a sandbox never sees), under /opt, so that hiding it is what is tested."""
    tmp = tmp_path_factory.mktemp("confinement")
    token = secrets.token_hex(4)
    home = Path(f"/opt/torpor-confinement-{token}")
    root_secret = Path(f"/root/.torpor-confinement-{token}")
    saved = os.environ.get("TORPOR_HOME")
    os.environ["TORPOR_HOME"] = str(home)
    settings = Settings(
        home=home, database_url=f"sqlite://{home / 'torpor.db'}", blob_url=f"file://{home}/b"
    )
    boxes: list[Sandbox] = []
    libc = ctypes.CDLL(None, use_errno=True)
    shm_id = -1
    try:
        home.mkdir(parents=True)
        (home / "torpor.db").write_text("the store")
        root_secret.write_text("root's secret")
        hidden = {
            p: p
            for p in (
                "/etc/shadow",
                "/etc/gshadow",
                "/var/lib/postgresql",
                "/run/postgresql",
                "/etc/ssh/ssh_host_ed25519_key",
            )
        }
        hidden.update({"a file in /root": str(root_secret), "TORPOR_HOME": str(home),
                       "the store's database": str(home / "torpor.db")})  # fmt: skip
        # The test's own Python (a virtualenv; its base may live under /root, hidden).
        # A System V shared memory segment of the host's root, which uid 0 could attach.
        shm_key = 0x74700000 | secrets.randbelow(1 << 16)
        shm_id = libc.shmget(shm_key, 4096, 0o1000 | 0o600)  # IPC_CREAT
        assert shm_id >= 0, os.strerror(ctypes.get_errno())
        cmd = [sys.executable, "-c", PROBE, json.dumps(hidden), str(shm_key)]
        results: dict[str, dict] = {}
        # Its code, as the snapshot road shares a run's: the virtualenv and torpor's source,
        # which may be under /tmp (private otherwise) in a fresh clone.
        share = [sys.prefix, str(Path(torpor.__file__).resolve().parents[1])]
        box = Sandbox.launch(cmd, settings=settings, share=share)
        boxes.append(box)
        assert wait_for(lambda: "waiting" in box.stdout_path.read_text(), timeout=30), (
            box.stderr_path.read_text()
        )
        results["launched"] = _result(box, 0)
        try:
            checkpoint = box.checkpoint(tmp / "ck")
        except TorporError as exc:  # an attack that worked (a mount) can make CRIU fail
            results.update({stage: {"error": f"checkpoint: {exc}"} for stage in STAGES[1:]})
        for stage, start in [
            ("restored", lambda: Sandbox.restore(checkpoint, settings=settings)),
            ("lazily restored", lambda: Sandbox.restore(checkpoint, lazy=True, settings=settings)),
            ("forked", lambda: Sandbox.fork(Checkpoint.load(tmp / "ck"), settings=settings)),
        ]:
            if stage in results:
                continue
            again: Sandbox = start()
            boxes.append(again)
            results[stage] = _result(again, 1)
            again.teardown()
        yield results
    finally:
        for box in boxes:
            box.teardown()
        if saved is None:
            os.environ.pop("TORPOR_HOME", None)
        else:
            os.environ["TORPOR_HOME"] = saved
        root_secret.unlink(missing_ok=True)
        if shm_id >= 0:
            libc.shmctl(shm_id, 0, None)  # IPC_RMID
        shutil.rmtree(home, ignore_errors=True)
    assert not _criu_fixtures._sandboxed_pids(home), "sandboxed processes left running"


Rule = Callable[[dict], None]


def _refused(name: str, *errnos: str) -> Rule:
    def check(seen: dict) -> None:
        assert seen[name] in errnos, f"{name}: {seen[name]}"

    return check


def _hidden(path: str) -> Rule:
    return _refused(f"stat {path}", "ENOENT")


def _no_capabilities(seen: dict) -> None:
    for who in ("self", "reaper"):
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(seen[who][field], 16) == 0, f"{who} {field} {seen[who][field]}"


def _no_new_privs_and_seccomp(seen: dict) -> None:
    for who in ("self", "reaper"):
        assert seen[who]["NoNewPrivs"] == "1", who
        assert seen[who]["Seccomp"] == "2", who  # a filter, not strict mode


RULES: dict[str, Rule] = {
    "/etc/shadow is not visible": _hidden("/etc/shadow"),
    "/etc/gshadow is not visible": _hidden("/etc/gshadow"),
    "a file in /root is not visible": _hidden("a file in /root"),
    "TORPOR_HOME is not visible": _hidden("TORPOR_HOME"),
    "the store's database is not visible": _hidden("the store's database"),
    "/var/lib/postgresql is not visible": _hidden("/var/lib/postgresql"),
    "sockets in /run are not visible": _hidden("/run/postgresql"),
    "the virtualenv still works": _refused("import torpor", "ok"),
    "other users' 0600 files are unreadable": _refused("read another user's 0600 file", "EACCES"),
    "no capabilities": _no_capabilities,
    "no_new_privs and a seccomp filter": _no_new_privs_and_seccomp,
    "open_by_handle_at with a forged handle": _refused("open_by_handle_at", "EPERM"),
    "name_to_handle_at": _refused("name_to_handle_at", "EPERM"),
    "writing core_pattern": _refused("write core_pattern", "EROFS"),
    # ENOENT on kernels without SysRq or /proc/kcore (as on the machines measured here)
    "writing sysrq-trigger": _refused("write sysrq-trigger", "EROFS", "ENOENT"),
    "reading kcore": _refused("read kcore", "EACCES", "EPERM", "ENOENT"),
    "mounting a cgroup hierarchy": _refused("mount cgroup", "EPERM"),
    "a new user namespace": _refused("unshare user namespace", "EPERM"),
    "a child in a new user namespace": _refused("clone into a user namespace", "EPERM"),
    "the host's System V IPC objects": _refused("the host's System V shared memory", "ENOENT"),
    "ptrace of the reaper": _refused("ptrace the reaper", "EPERM"),
    "the reaper's memory": _refused("open the reaper's memory", "EACCES", "EPERM"),
    "keyctl": _refused("keyctl", "EPERM"),
    "bpf": _refused("bpf", "EPERM"),
    "an x32 syscall": _refused("x32 syscall", "EPERM"),
    "an i386 syscall kills the process (SIGSYS)": _refused("i386 syscall", "killed by signal 31"),
}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("rule", list(RULES))
def test_confinement(seen: dict[str, dict], stage: str, rule: str) -> None:
    assert "error" not in seen[stage], seen[stage]["error"]
    RULES[rule](seen[stage])
