"""Finding CRIU, `torpor doctor`'s snapshot checks, and cleaning up after a SIGKILLed owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import _criu_fixtures
from _criu_fixtures import wait_for
from conftest import Cli, torpor_env
from torpor import Settings
from torpor.sandbox import (
    Criu,
    CriuNotFoundError,
    find_criu,
    find_orphans,
    process_start_time,
)
from torpor.testing import wait_until

# Fixtures, used by name.
criu = _criu_fixtures.criu
settings = _criu_fixtures.settings

OWNER = """
import sys, time
from torpor.sandbox import Sandbox
box = Sandbox.launch(["sleep", "600"])
print(box.id, box.pid, flush=True)
time.sleep(600)
"""


def _fake_criu(directory: Path, version: str) -> Path:
    """An executable that only reports a version: enough to test how criu is chosen."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "criu"
    path.write_text(f"#!/bin/sh\necho 'Version: {version}'\n")
    path.chmod(0o755)
    return path


def test_find_criu_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, database_url="sqlite:///x", blob_url="file:///x")
    on_path = _fake_criu(tmp_path / "bin", "3.17.1")
    monkeypatch.setenv("PATH", f"{on_path.parent}:/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # nothing provisioned in ~/.torpor
    monkeypatch.delenv("TORPOR_CRIU", raising=False)
    with pytest.raises(CriuNotFoundError, match=r"criu 3\.17\.1, older than 4\.2") as err:
        find_criu(settings)
    assert "scripts/provision-criu" in err.value.message
    _fake_criu(tmp_path / "bin", "4.2.1")
    assert find_criu(settings).source == "PATH"
    # scripts/setup provisions into the default home; another TORPOR_HOME still finds it.
    default = _fake_criu(tmp_path / "user" / ".torpor" / "criu" / "bin", "4.2.2")
    assert find_criu(settings) == Criu(str(default), "4.2.2", "~/.torpor")
    provisioned = _fake_criu(home / "criu" / "bin", "4.3")
    assert find_criu(settings) == Criu(str(provisioned), "4.3", "TORPOR_HOME")
    monkeypatch.setenv("TORPOR_CRIU", str(_fake_criu(tmp_path / "explicit", "4.2")))
    assert find_criu(settings).source == "TORPOR_CRIU"
    # A CRIU the user named explicitly must work: no silent fallback to another one.
    monkeypatch.setenv("TORPOR_CRIU", "/bin/true")
    with pytest.raises(CriuNotFoundError, match="TORPOR_CRIU names /bin/true"):
        find_criu(settings)


def test_doctor_without_criu_warns_but_passes(tmp_path: Path) -> None:
    env = torpor_env(f"sqlite://{tmp_path / 'db'}", tmp_path / "home")
    env["PATH"] = "/usr/bin:/bin"  # no criu there on the machines this runs on
    env["HOME"] = str(tmp_path / "user")  # and none provisioned in ~/.torpor
    result = Cli(env)("doctor")
    assert "WARN  criu" in result.out and "snapshot road unavailable" in result.out
    assert "fix: run scripts/provision-criu" in result.out
    assert result.code == 0, result.out


def test_doctor_fails_on_a_broken_configured_criu(tmp_path: Path) -> None:
    env = torpor_env(f"sqlite://{tmp_path / 'db'}", tmp_path / "home", TORPOR_CRIU="/bin/true")
    result = Cli(env)("doctor")
    assert result.code == 1
    assert "FAIL  criu" in result.out and "TORPOR_CRIU names /bin/true" in result.out


@pytest.mark.criu
def test_doctor_checks_the_snapshot_road(criu: Criu, tmp_path: Path) -> None:
    env = torpor_env(f"sqlite://{tmp_path / 'db'}", tmp_path / "home", TORPOR_CRIU=criu.path)
    result = Cli(env)("doctor")
    assert result.code == 0, result.out
    for line in ("ok    criu ", "ok    criu check", "ok    sandbox ", "ok    sandboxes"):
        assert line in result.out, result.out
    assert "launch" in result.out and "restore" in result.out


@pytest.mark.criu
def test_cleanup_after_the_owner_is_sigkilled(settings: Settings) -> None:
    env = torpor_env(settings.database_url, settings.home, TORPOR_CRIU=os.environ["TORPOR_CRIU"])
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    sandbox_id, pid = owner.stdout.readline().split()
    directory = settings.home / "sandboxes" / sandbox_id
    assert find_orphans(settings) == []  # its owner lives: not an orphan
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    # The tree dies with its owner (its watcher kills it); its mounts and directory stay. (A
    # zombie counts as dead: after a restore in this process, the pytest process is a
    # subreaper that inherits the orphaned tree and does not reap it.)
    wait_until(lambda: process_start_time(int(pid)) is None, "the tree to die", timeout=5)

    orphans = find_orphans(settings)
    assert [(o.sandbox_id, o.running_pid) for o in orphans] == [(sandbox_id, None)]
    mounts = orphans[0].mounts
    assert mounts >= 1 and "is gone" in orphans[0].reason
    assert directory.exists()
    cli = Cli(env)
    listed = cli("doctor")
    assert listed.code == 1 and "FAIL  sandboxes" in listed.out and sandbox_id in listed.out
    assert "fix: torpor doctor --cleanup" in listed.out
    assert directory.exists()  # listing does not remove

    cleaned = cli("doctor", "--cleanup")
    assert cleaned.code == 0, cleaned.out
    assert f"removed 1 orphaned: {sandbox_id} ({mounts} mounts)" in cleaned.out
    assert not directory.exists() and find_orphans(settings) == []
    assert str(directory) not in Path("/proc/self/mountinfo").read_text()  # unmounted


def test_sandbox_public_names_are_exactly_these() -> None:
    import torpor.sandbox

    assert set(torpor.sandbox.__all__) == {
        "MIN_CRIU_VERSION", "Checkpoint", "CheckpointBlockedError", "Criu", "CriuError",
        "CriuNotFoundError", "Orphan", "Sandbox", "SandboxError", "SandboxState", "find_criu",
        "find_orphans", "remove_orphans",
        # For the rest of torpor: restoring from the store, processes, `torpor doctor`.
        "PAGES_ELSEWHERE", "PageSource", "CheckpointBaseRootError", "base_root_record",
        "write_base_root", "alive", "kill_tree", "process_start_time", "process_state",
        "read_sandbox_meta", "read_run_file", "tree_processes", "available_controllers",
        "fstype", "has_sys_admin",
    }  # fmt: skip
    for name in torpor.sandbox.__all__:
        assert hasattr(torpor.sandbox, name), name


def test_the_proc_reader_tells_a_stopped_a_running_and_a_gone_process() -> None:
    from torpor.sandbox import alive, kill_tree, process_start_time, process_state

    child = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start_time(child.pid)
        assert started is not None and alive(child.pid, started)
        assert not alive(child.pid, started + 1)  # another process under a reused pid
        os.kill(child.pid, signal.SIGSTOP)
        assert wait_for(lambda: process_state(child.pid) == "T")
        kill_tree(child.pid, started)
        assert process_state(child.pid) == "Z" and process_start_time(child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) == "?" and not alive(child.pid, started)


def test_doctor_finds_and_removes_a_stale_criu_cache_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torpor.cli import _doctor

    run = tmp_path / "run"
    run.mkdir()
    stale = run / "criu.kdat.tmp"
    monkeypatch.setattr(_doctor, "_KDAT_TMP", stale)
    lines: list[str] = []
    monkeypatch.setattr(_doctor, "fstype", lambda path: "ext4")
    _doctor._check_criu_cache(_doctor._Report(lines.append), cleanup=False)
    assert len(lines) == 1 and "is not a tmpfs, so CRIU keeps no cache" in lines.pop()

    monkeypatch.setattr(_doctor, "fstype", lambda path: "tmpfs")
    _doctor._check_criu_cache(_doctor._Report(lines.append), cleanup=False)
    assert lines == []  # no leftover, nothing to say
    stale.touch()
    _doctor._check_criu_cache(_doctor._Report(lines.append), cleanup=False)
    assert lines == []  # fresh: a criu may be writing it
    os.utime(stale, (0, 0))
    _doctor._check_criu_cache(_doctor._Report(lines.append), cleanup=False)
    assert len(lines) == 1 and "CRIU cannot cache the kernel's features" in lines[0]
    assert "torpor doctor --cleanup" in lines[0] and stale.exists()
    _doctor._check_criu_cache(_doctor._Report(lines.append), cleanup=True)
    assert "removed the stale" in lines[1] and not stale.exists()


def test_fstype_reads_the_mount_table() -> None:
    from torpor.cli import _doctor

    assert _doctor.fstype("/proc") == "proc"
    assert _doctor.fstype("/no/such/mount") is None
