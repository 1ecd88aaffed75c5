"""The examples run as shipped (offline: the scripted model stands in for the real one)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import torpor_env

EXAMPLES = Path(__file__).parent.parent / "examples"


def _env(tmp_path: Path) -> dict[str, str]:
    env = torpor_env(f"sqlite://{tmp_path / 'torpor.db'}", tmp_path / "home")
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TORPOR_MODEL"):
        env.pop(key, None)
    return env


def _run(name: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_plain_workflow(tmp_path: Path) -> None:
    out = _run("plain_workflow.py", tmp_path)
    assert "['reserved book', 'shipped book against rc-r-" in out


def test_coding_agent(tmp_path: Path) -> None:
    assert "It printed: hello from the agent" in _run("coding_agent.py", tmp_path)


def test_research_agent_waits_for_the_human(tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "research_agent.py")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        run_id = line.split()[1]
        time.sleep(0.5)
        sent = subprocess.run(
            [sys.executable, "-m", "torpor", "send", run_id, "human", '{"text": "costs"}'],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Summary, as asked (costs)" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
