"""The process a snapshot-road sandbox starts: it runs the workflow over the gateway's
journal, so every step result, wait and model call goes through the worker.

    python -m torpor.gateway._runner      (with TORPOR_GATEWAY=/run/torpor/gateway.sock)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading

from .._model import RunRecord
from ..engine import execute_run
from ._client import GatewayClient
from ._journal import GatewayJournal
from ._ops import Exit, Hello
from ._protocol import GATEWAY_ENV


def main() -> int:
    client = GatewayClient(os.environ[GATEWAY_ENV])
    hello = client.call(Hello())
    run = RunRecord.from_json(hello["run"])
    run = dataclasses.replace(run, source=hello.get("source"))
    sys.path[:0] = [p for p in hello.get("sys_path", []) if p not in sys.path]
    status = execute_run(
        GatewayJournal(client, run), worker_id=str(hello["worker"]), stopping=threading.Event()
    )
    client.call(Exit(status=None if status is None else status.value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
