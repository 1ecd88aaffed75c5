"""Fixtures for tests that need a working CRIU, and a guard that sandboxes leave nothing behind.

Without CRIU such tests skip with the reason, except under TORPOR_REQUIRE_CRIU=1 (CI), where
they fail: a CI run that silently skipped the snapshot road would prove nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torpor import Settings, TorporError
from torpor.sandbox import Criu, find_criu
from torpor.testing import wait_until


def _criu_or_reason() -> Criu | str:
    if os.geteuid() != 0:
        return "CRIU needs root; run the tests as root"
    try:
        return find_criu(Settings.from_env())
    except TorporError as exc:
        return exc.message


@pytest.fixture(scope="session")
def criu() -> Iterator[Criu]:
    """The CRIU under test, exported as TORPOR_CRIU so that temporary TORPOR_HOMEs find it."""
    found = _criu_or_reason()
    if isinstance(found, str):
        if os.environ.get("TORPOR_REQUIRE_CRIU") == "1":
            pytest.fail(f"TORPOR_REQUIRE_CRIU=1 but CRIU is unavailable: {found}")
        pytest.skip(f"CRIU unavailable: {found}")
    saved = os.environ.get("TORPOR_CRIU")
    os.environ["TORPOR_CRIU"] = found.path
    try:
        yield found
    finally:
        if saved is None:
            os.environ.pop("TORPOR_CRIU", None)
        else:
            os.environ["TORPOR_CRIU"] = saved


def _sandboxed_pids(under: Path) -> set[int]:
    """Processes living in a pid namespace below ours whose root overlay is below ``under``:
    the trees of one test's sandboxes, not those of other test runs on the same machine."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            nested = any(
                line.startswith("NSpid:") and len(line.split()) > 2 for line in status.splitlines()
            )
            # The overlay's options name its host directories, whatever the process's root.
            if nested and f"upperdir={under}/" in Path(f"/proc/{entry}/mountinfo").read_text():
                found.add(int(entry))
        except OSError:
            continue
    return found


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory)
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]


@pytest.fixture
def settings(criu: Criu, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose TORPOR_HOME is a fresh directory; after the test, nothing the test's
    sandboxes made may still be mounted or running."""
    home = tmp_path / "home"
    base = Settings.from_env()
    yield Settings(home=home, database_url=f"sqlite://{home / 'torpor.db'}", blob_url=base.blob_url)
    wait_for(lambda: not _sandboxed_pids(tmp_path), timeout=5)
    assert not _sandboxed_pids(tmp_path), "sandboxed processes left running"
    assert not _mounts_under(tmp_path), f"left mounted: {_mounts_under(tmp_path)}"


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether ``condition`` became true within ``timeout`` seconds (`wait_until`, for the
    sandbox tests that assert on the outcome themselves)."""
    try:
        wait_until(condition, timeout=timeout, interval=0.01)
    except TimeoutError:
        return False
    return True
