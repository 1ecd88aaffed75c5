"""The gateway's wire protocol: one JSON request and one JSON reply per unix-socket
connection, each a single line.

A connection lives only for one call, so between calls the sandbox holds no connection to
the outside and can be checkpointed (CRIU cannot restore a unix socket whose peer is outside
the dumped tree).
"""

from __future__ import annotations

import json
import socket
from typing import Any

__all__ = ["GATEWAY_ENV", "MAX_MESSAGE", "read_message", "write_message"]

# Inside the sandbox: where the runner finds the gateway socket.
GATEWAY_ENV = "TORPOR_GATEWAY"
# Log payloads are capped at 16 MiB by default; a message carries one plus some framing.
MAX_MESSAGE = 64 * 1024 * 1024


def write_message(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    sock.sendall(data)


def read_message(sock: socket.socket) -> dict[str, Any]:
    """One line of JSON: a `ConnectionError` if the peer went away before a whole line (or
    sent too much), a `ValueError` if the line is no JSON object."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the gateway connection closed before a whole message")
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > MAX_MESSAGE:
            raise ConnectionError(f"a gateway message is over {MAX_MESSAGE} bytes")
    try:
        message = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message
