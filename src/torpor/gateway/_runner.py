"""The process a snapshot-road sandbox starts: it runs the workflow with the gateway as
its store, so every step result, wait and model call goes through the worker.

    python -m torpor.gateway._runner      (with TORPOR_GATEWAY=/run/torpor/gateway.sock)
"""

from __future__ import annotations

import os
import sys
import threading

from ._client import GatewayClient, GatewayStore, SandboxedContext, record_from_wire
from ._protocol import GATEWAY_ENV


def main() -> int:
    client = GatewayClient(os.environ[GATEWAY_ENV])
    hello = client.call("hello")
    run = record_from_wire(hello["run"])
    sys.path[:0] = [p for p in hello.get("sys_path", []) if p not in sys.path]
    from ..engine._engine import execute_run

    status = execute_run(
        GatewayStore(client),  # type: ignore[arg-type]
        run,
        worker_id=str(hello["worker"]),
        park_after=None,
        stopping=threading.Event(),
        spawn=lambda child: client.call("spawn", run_id=child),
        context_class=SandboxedContext,
    )
    client.call("exit", status=None if status is None else status.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
