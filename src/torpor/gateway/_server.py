"""The worker's side of the gateway: a unix socket in the sandbox's ``run/`` directory
(``/run/torpor/gateway.sock`` inside), one thread per call.

What connects is treated as hostile, and bounded:

- ``authorize(pid)`` is asked about each caller (its host pid, from ``SO_PEERCRED``) before
  anything is read: a process that is not the sandbox's is refused and disconnected;
- at most ``max_connections`` connections at once (one thread each); more are closed at
  once (the sandbox's client retries them);
- a request must be whole within ``read_timeout`` seconds of the connection and at most
  ``max_message`` bytes long; a reply must be taken within ``write_timeout``;
- a malformed, oversized or late request gets a one-line refusal (when it can still be
  sent) and a one-line warning in the worker's log, never a traceback.

`quiesce` is how a safe point is reached from outside: stop accepting calls, drop the
connections whose request is not read yet (their clients retry), let the calls in flight
finish, and from then on the sandbox holds no connection to the worker, so CRIU can dump
it; `reopen` lets calls in again (the sandbox retries the refused ones).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import TorporError
from ..engine import encode_error
from ._protocol import MAX_MESSAGE, MessageTooLargeError, encode_message, read_message

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_READ_TIMEOUT",
    "Authorize",
    "GatewayServer",
    "Handler",
]

log = logging.getLogger("torpor.gateway")

# A handler gets the request and the caller's host pid; it returns the reply and, optionally,
# something to do once the reply is sent and the connection closed.
Handler = Callable[[dict[str, Any], int], tuple[dict[str, Any], Callable[[], None] | None]]
# Asked with a caller's host pid: None to let it in, else why it is refused.
Authorize = Callable[[int], str | None]

# A sandbox's runner makes one call per thread of the workflow at a time: a few at once.
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 10.0

_READING, _HANDLING = "reading", "handling"


def _peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def _refuse(conn: socket.socket, message: str) -> None:
    """A one-line error for a caller whose request is not answered; never blocks."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(encode_message({"error": encode_error(TorporError(message))}))


class GatewayServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        authorize: Authorize | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.path = path
        self.handler = handler
        self.authorize = authorize
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_message = max_message
        self._listener: socket.socket | None = None
        self._conns: dict[socket.socket, str] = {}  # open connections: reading or handling
        self._idle = threading.Condition()
        self._closed = False
        self._full_warned = False
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self.quiescing = threading.Event()

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._idle:
            return len(self._conns)

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
            # With ``authorize``, the caller's process is checked, which a file mode cannot
            # do: the sandbox's command may run as any user id, so anyone may connect. Else
            # only this user.
            os.chmod(self.path, 0o666 if self.authorize is not None else 0o600)
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
            if not self._admit(conn):
                conn.close()
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="torpor-gateway-call", daemon=True
            ).start()

    def _admit(self, conn: socket.socket) -> bool:
        """Whether to serve ``conn``: it comes from the sandbox, the gateway is open and
        not full. A refused caller is told why when it is not the sandbox's."""
        with self._idle:
            if self.quiescing.is_set() or self._closed:
                return False  # the sandbox retries once the gateway reopens
            if len(self._conns) >= self.max_connections:
                if not self._full_warned:
                    self._full_warned = True
                    log.warning(
                        "gateway %s: %d connections open, its limit; refusing more until "
                        "some close", self.path, self.max_connections,
                    )  # fmt: skip
                return False
            self._full_warned = False
        if self.authorize is not None:
            try:
                pid = _peer_pid(conn)
                refused = self.authorize(pid)
            except OSError as exc:
                refused = f"its caller is unknown ({exc})"
            if refused is not None:
                log.warning("gateway %s: refused a connection: %s", self.path, refused)
                _refuse(conn, f"gateway: refused: {refused}")
                return False
        with self._idle:
            if self.quiescing.is_set() or self._closed:
                return False
            self._conns[conn] = _READING
        return True

    def _serve(self, conn: socket.socket) -> None:
        after: Callable[[], None] | None = None
        try:
            try:
                request = read_message(conn, self.max_message, time.monotonic() + self.read_timeout)
                pid = _peer_pid(conn)
            except MessageTooLargeError as exc:
                log.warning("gateway %s: refused a request: %s", self.path, exc)
                _refuse(conn, f"bad gateway message: {exc}")
                return
            except ValueError as exc:  # no JSON object: the sandbox's mistake, not the worker's
                log.warning("gateway %s: refused a request: it is %s", self.path, exc)
                _refuse(conn, f"bad gateway message: it is {exc}")
                return
            except TimeoutError:
                log.warning(
                    "gateway %s: dropped a connection with no whole request after %g s",
                    self.path, self.read_timeout,
                )  # fmt: skip
                _refuse(conn, f"bad gateway message: none whole within {self.read_timeout:g} s")
                return
            except OSError as exc:  # cut short: by the caller, or by quiesce
                if not self.quiescing.is_set():
                    log.warning("gateway %s: a request was cut short (%s)", self.path, exc)
                return
            with self._idle:
                if self.quiescing.is_set() or self._closed:
                    return  # read as the gateway closed: the client retries it
                self._conns[conn] = _HANDLING
            try:
                reply, after = self.handler(request, pid)
            except Exception as exc:
                # A fault of the worker's; its traceback only at debug level, so that a
                # sandbox that found a way to cause one cannot flood the log with them.
                log.warning("gateway %s: a call failed: %s: %s", self.path, type(exc).__name__,
                            exc)  # fmt: skip
                log.debug("gateway call failure", exc_info=True)
                reply = {"error": encode_error(TorporError(f"gateway: {exc}"))}
            try:
                conn.settimeout(self.write_timeout)
                conn.sendall(encode_message(reply))
            except OSError as exc:
                log.warning("gateway %s: a reply was not taken (%s)", self.path, exc)
        finally:
            conn.close()
            with self._idle:
                self._conns.pop(conn, None)
                self._idle.notify_all()
            if after is not None:
                after()

    def quiesce(self, timeout: float = 60.0) -> bool:
        """Refuse new calls, drop the connections whose request is not read yet (a held or
        idle one must not hold a checkpoint up; their clients retry), and wait until no
        call is in flight; False if one stayed."""
        with self._idle:
            self.quiescing.set()
            listener, self._listener = self._listener, None
            waiting = [conn for conn, state in self._conns.items() if state == _READING]
        if listener is not None:
            # Closing alone does not wake a thread blocked in accept(): it would stay, one
            # per checkpoint, for the worker's life. Shutting the socket down does.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            self._unlink_own()
        for conn in waiting:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread's recv()
        with self._idle:
            return self._idle.wait_for(lambda: not self._conns, timeout)

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
