"""The worker's side of the gateway: a unix socket in the sandbox's ``run/`` directory
(``/run/torpor/gateway.sock`` inside), one thread per call.

`quiesce` is how a safe point is reached from outside: stop accepting calls, let the
calls in flight finish, and from then on the sandbox holds no connection to the worker, so
CRIU can dump it; `reopen` lets calls in again (the sandbox retries the refused ones).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import TorporError
from ..engine import encode_error
from ._protocol import read_message, write_message

__all__ = ["GatewayServer", "Handler"]

log = logging.getLogger("torpor.gateway")

# A handler gets the request and the caller's host pid; it returns the reply and, optionally,
# something to do once the reply is sent and the connection closed.
Handler = Callable[[dict[str, Any], int], tuple[dict[str, Any], Callable[[], None] | None]]


def _peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


class GatewayServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._listener: socket.socket | None = None
        self._active = 0
        self._idle = threading.Condition()
        self._closed = False
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self.quiescing = threading.Event()

    def open(self) -> None:
        """Listen at ``path`` (again)."""
        with self._idle:
            self.quiescing.clear()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.path.unlink(missing_ok=True)
            # A socket path is limited to 107 bytes, and sandboxes can live deep in the
            # filesystem: bind through a descriptor of the directory, a short path.
            folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                listener.bind(f"/proc/self/fd/{folder}/{self.path.name}")
            finally:
                os.close(folder)
            os.chmod(self.path, 0o600)
            made = self.path.stat()
            self._bound = (made.st_dev, made.st_ino)
            listener.listen(16)
            self._listener = listener
        threading.Thread(
            target=self._accept, args=(listener,), name="torpor-gateway", daemon=True
        ).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by quiesce or close
            with self._idle:
                if self.quiescing.is_set() or self._closed:
                    conn.close()  # the sandbox retries once the gateway reopens
                    continue
                self._active += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        after: Callable[[], None] | None = None
        try:
            request = read_message(conn)
            reply, after = self.handler(request, _peer_pid(conn))
            write_message(conn, reply)
        except ConnectionError as exc:  # a message cut short or too large: nothing to answer
            log.warning("gateway: %s", exc)
        except ValueError as exc:  # no JSON object: the sandbox's mistake, not the worker's
            log.warning("gateway: a message is %s", exc)
            error = TorporError(f"bad gateway message: {exc}")
            with contextlib.suppress(OSError):
                write_message(conn, {"error": encode_error(error)})
        except Exception as exc:
            log.warning("gateway call failed: %s", exc, exc_info=True)
            with contextlib.suppress(OSError):
                write_message(conn, {"error": encode_error(TorporError(f"gateway: {exc}"))})
        finally:
            conn.close()
            with self._idle:
                self._active -= 1
                self._idle.notify_all()
        if after is not None:
            after()

    def quiesce(self, timeout: float = 60.0) -> bool:
        """Refuse new calls and wait until none is in flight; False if one stayed."""
        with self._idle:
            self.quiescing.set()
            listener, self._listener = self._listener, None
        if listener is not None:
            # Closing alone does not wake a thread blocked in accept(): it would stay, one
            # per checkpoint, for the worker's life. Shutting the socket down does.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            self._unlink_own()
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _unlink_own(self) -> None:
        """Remove the socket file if it is still the one this server made: a worker that
        lost its run (paused past its lease) must not remove the gateway of the worker that
        restored the run since, in a directory of the same name."""
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return
        if (now.st_dev, now.st_ino) == self._bound:
            self.path.unlink(missing_ok=True)

    def reopen(self, path: Path | None = None) -> None:
        if path is not None:
            self.path = path
        self.open()

    def close(self) -> None:
        with self._idle:
            self._closed = True
        self.quiesce(timeout=5.0)
