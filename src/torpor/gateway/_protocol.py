"""The gateway's wire protocol: one JSON request and one JSON reply per unix-socket
connection, each a single line.

A connection lives only for one call, so between calls the sandbox holds no connection to
the outside and can be checkpointed (CRIU cannot restore a unix socket whose peer is outside
the dumped tree).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

__all__ = [
    "GATEWAY_ENV",
    "MAX_MESSAGE",
    "MessageTooLargeError",
    "encode_message",
    "read_message",
    "write_message",
]

# Inside the sandbox: where the runner finds the gateway socket.
GATEWAY_ENV = "TORPOR_GATEWAY"
# The largest request a worker reads from a sandbox (a line of JSON). A sandbox is hostile:
# what it sends is held in the worker's memory until the line is whole. A request carries a
# log payload (capped at TORPOR_MAX_PAYLOAD_BYTES on the store's side), so on the snapshot
# road a payload must fit in this too. Replies, from the trusted worker, have no such cap.
MAX_MESSAGE = 4 * 1024 * 1024


class MessageTooLargeError(ValueError):
    """A message longer than the reader accepts."""


def encode_message(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def write_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode_message(message))


def read_message(
    sock: socket.socket, limit: int | None = None, deadline: float | None = None
) -> dict[str, Any]:
    """One line of JSON. Raises `ConnectionError` if the peer went away before a whole line,
    `MessageTooLargeError` past ``limit`` bytes, `TimeoutError` if the line is not whole by
    ``deadline`` (a `time.monotonic` time), `ValueError` if the line is no JSON object."""
    data = bytearray()
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no whole message in time")
            sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the gateway connection closed before a whole message")
        end = chunk.find(b"\n")
        data += chunk if end < 0 else chunk[:end]
        if limit is not None and len(data) > limit:
            raise MessageTooLargeError(f"a gateway message is over {limit} bytes")
        if end >= 0:
            break
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message
