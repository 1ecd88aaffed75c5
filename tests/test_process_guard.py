"""The suite's guard against subprocesses that outlive their test (tests/_process_guard.py).

A subprocess a fixture forgot used to be garbage-collected during some later, unrelated
test, which then failed on `Popen.__del__`'s warning. The guard makes the test that started
it fail, names the process and kills it; the tests after it are unaffected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

LEAKY = """
import subprocess

import pytest


@pytest.fixture
def server():
    proc = subprocess.Popen(["sleep", "300"])
    yield proc  # never stopped, never waited for


def test_uses_the_server(server):
    assert server.poll() is None


def test_after_it():
    pass


def test_waits_for_its_own():
    proc = subprocess.Popen(["sleep", "0.1"])
    proc.wait()
"""


def test_a_fixture_whose_subprocess_outlives_its_test_fails_that_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pytester.makeconftest('pytest_plugins = ["_process_guard"]')
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    match = re.search(
        r"ERROR at teardown of test_uses_the_server.*?subprocesses outlived the test "
        r"\(now killed\): pid (\d+): sleep 300",
        out,
        re.S,
    )
    assert match, out
    assert not os.path.exists(f"/proc/{match.group(1)}")
