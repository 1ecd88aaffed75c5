"""The sandbox's side of the gateway: the client that calls the worker.

Every call opens a connection, sends one request, reads one reply and closes. When the
worker answers ``stop``, the process stops itself (SIGSTOP) with no connection open; the
worker then checkpoints it and continues it — on this machine or, after a suspend or a
crash, as a restored copy anywhere. ``stop: "retry"`` means: once continued, send the same
request again (the answer may now be different, e.g. the awaited event came).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from typing import Any

from .._errors import TorporError
from ..engine import decode_error
from ._ops import Op
from ._protocol import MAX_MESSAGE, encode_message, read_message

__all__ = ["GatewayClient"]

_CONNECT_PATIENCE_S = 120.0


class GatewayClient:
    """Calls the worker through the gateway socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def call(self, op: Op) -> Any:
        """Send ``op``; its result, or its error raised as the worker raised it."""
        # Python mode: a JSON mode dump would turn NaN and infinities into null silently;
        # sent as they are, the worker refuses them as the replay road's store does.
        request = op.model_dump()
        data = encode_message(request)
        if len(data) > MAX_MESSAGE:
            # The worker would refuse it: say why here, rather than retry a cut connection.
            raise TorporError(
                f"a {request['op']} request of {len(data)} bytes is over the gateway's limit "
                f"of {MAX_MESSAGE} bytes: on the snapshot road a log payload (a step's "
                "result, a workflow's input or output) must be smaller; keep large data in "
                "files in the workspace"
            )
        while True:
            reply = self._exchange(data)
            stop = reply.get("stop")
            if stop:
                # No connection is open now: safe to be dumped while stopped.
                os.kill(os.getpid(), signal.SIGSTOP)
                if stop == "retry":
                    continue
            if "error" in reply:
                raise decode_error(reply["error"])
            return reply.get("result")

    def _exchange(self, data: bytes) -> dict[str, Any]:
        deadline = time.monotonic() + _CONNECT_PATIENCE_S
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                sock.sendall(data)
                return read_message(sock)
            except OSError as exc:
                # The worker re-creates its socket after a checkpoint or restore; a
                # connection cut mid-call (the worker died) is retried against the next one.
                retryable = isinstance(exc, ConnectionError) or exc.errno in (
                    errno.ENOENT,
                    errno.ECONNREFUSED,
                )
                if not retryable or time.monotonic() > deadline:
                    raise TorporError(f"the gateway at {self.path} is unreachable: {exc}") from None
            finally:
                sock.close()
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
