"""Lazy restore: the tree runs at once, its memory follows through userfaultfd.

`criu restore --lazy-pages` restores everything but the private anonymous memory (the bulk
of a large process), registers that memory with a userfaultfd per process and hands the
descriptors to a `criu lazy-pages` daemon; the tree resumes, and the daemon fills each page
on its first touch, then copies all the remaining ones in the background and exits.

The daemon reads pages either from the checkpoint's own ``pages-*.img`` (they must be
complete and local) or, with a `PageSource`, from this process: CRIU's page-server protocol
over a socket pair (``--page-server --ps-socket``), answered by `_serve` with the bytes the
source returns, e.g. chunks fetched from the snapshot store and verified one by one.

What keeps a restored process from ever reading memory that was not restored: the kernel
fills an unfilled page with zeros once every descriptor of its userfaultfd is closed, so
`_lazy_keeper.py` (CRIU's post-restore action) holds copies of them; the daemon's failure,
a page source's error or this process's death ends in SIGKILL for the tree (see
docs/sandbox.md, "Lazy restore").
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .._errors import CriuError, SandboxError
from ._criu import Criu

__all__ = ["LazyPages", "PageSource"]

_KEEPER = Path(__file__).with_name("_lazy_keeper.py")
_READY_TIMEOUT = 30.0
_KEEPER_TIMEOUT = 10  # seconds CRIU's post-restore action waits for the keeper
# CRIU's page-server protocol (criu/page-xfer.c): a request or answer header is
# {u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id} with natural alignment.
_PSI = struct.Struct("<I4xQQQ")
_PS_IOV_GET = 7
_PS_IOV_ADD_F = 6
_PE_PRESENT = 1 << 2
_PS_CMD_BITS = 16
_PS_IOV_CLOSE = 0x1023
_PS_IOV_FORCE_CLOSE = 0x1024
_PAGE = 4096


class PageSource(Protocol):
    """Where a lazy restore's pages come from when they are not in the images directory."""

    def read(self, pid: int, vaddr: int, nr_pages: int) -> bytes:
        """``nr_pages`` pages of process ``pid`` (its id in the images) from ``vaddr``.

        Raise any exception when they cannot be had intact: the tree is then killed.
        """
        ...

    def close(self) -> None:
        """Release what the source holds; called once the pages are all transferred."""
        ...


class LazyPages:
    """One `criu lazy-pages` daemon and what watches it, for one lazy restore."""

    def __init__(
        self,
        criu: Criu,
        sandbox_id: str,
        images: Path,
        state: Path,
        source: PageSource | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.images = images
        self.state = state  # the daemon's work directory (its socket) and the keeper's files
        self.source = source
        self.error: Exception | None = None
        self.served_pages = 0
        self._criu = criu
        self._daemon: subprocess.Popen[bytes] | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ready_fd: int | None = None
        self._threads: list[threading.Thread] = []
        self._finished = threading.Event()
        self._stopping = False
        self._kill_tree: Callable[[], None] | None = None
        self.started = time.perf_counter()
        self.finished_at: float | None = None

    @property
    def log(self) -> Path:
        return self.state / "lazy-pages.log"

    def start(self) -> None:
        """Start the daemon; `wait_ready` before the restore. Runs in its own session, so
        that a signal to the worker's process group does not take the pages with it."""
        self.state.mkdir(parents=True, exist_ok=True)
        expected = len(list(self.images.glob("pagemap-*.img")))
        if expected == 0:
            raise SandboxError(
                self.sandbox_id, f"{self.images} holds no pagemap image: nothing to restore lazily",
                "restore it without lazy=True",
            )  # fmt: skip
        self._expected = expected
        ready_r, ready_w = os.pipe()
        args = [
            *self._criu.command(cached=True), "lazy-pages", "-D", str(self.images),
            "--work-dir", str(self.state),
            "--status-fd", str(ready_w), "-o", str(self.log), "-v1",
        ]  # fmt: skip
        fds = [ready_w]
        theirs = None
        if self.source is not None:
            self._sock, theirs = socket.socketpair()
            args += ["--page-server", "--ps-socket", str(theirs.fileno())]
            fds.append(theirs.fileno())
        try:
            self._daemon = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=fds,
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
            if theirs is not None:
                theirs.close()
        self._ready_fd = ready_r
        if self._sock is not None:  # from now on: the restore itself may touch lazy pages
            self._spawn(self._serve, "pages")
        os.mkfifo(self.state / "grab", 0o600)
        os.mkfifo(self.state / "grabbed", 0o600)
        self._keeper = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_KEEPER), str(self._daemon.pid), str(expected),
             str(os.getpid()), str(self.state)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self) -> None:
        """Return once the daemon listens for the restore.

        Raises:
            CriuError: the daemon ended or did not get ready.
        """
        assert self._ready_fd is not None and self._daemon is not None
        import select

        ready = select.select([self._ready_fd], [], [], _READY_TIMEOUT)[0]
        got = os.read(self._ready_fd, 1) if ready else b""
        os.close(self._ready_fd)
        self._ready_fd = None
        if got != b"\0":
            self._daemon.kill()
            self._daemon.wait()
            raise CriuError(
                self.sandbox_id, "lazy-pages", "the daemon did not start" if ready else
                f"the daemon was not ready within {_READY_TIMEOUT:.0f} s", str(self.log),
                "check that the kernel has userfaultfd (`torpor doctor`)",
            )  # fmt: skip

    def restore_args(self) -> list[str]:
        """What `criu restore` needs to hand its memory to the daemon."""
        assert self._daemon is not None
        hook = self.state / "post-restore.sh"
        grab, grabbed = _quote(str(self.state / "grab")), _quote(str(self.state / "grabbed"))
        # The tree stays stopped until the keeper holds its userfaultfds (_lazy_keeper.py).
        hook.write_text(
            "#!/bin/sh\n"
            '[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0\n'
            f"exec timeout {_KEEPER_TIMEOUT} sh -c "
            """'echo "$CRTOOLS_INIT_PID" > "$1" && read ok < "$2" && [ "$ok" = ok ]' """
            f"sh {grab} {grabbed}\n"
        )
        hook.chmod(0o755)
        return ["--lazy-pages", "--work-dir", str(self.state), "--action-script", str(hook)]

    def watch(self, kill_tree: Callable[[], None]) -> None:
        """After a successful restore: serve pages (with a source) and watch the daemon;
        ``kill_tree`` is called first thing when the pages cannot all arrive."""
        self._kill_tree = kill_tree
        if self.error is not None:
            kill_tree()
        self._spawn(self._watch_daemon, "daemon")

    def _spawn(self, target: Callable[[], None], what: str) -> None:
        thread = threading.Thread(target=target, name=f"lazy-{what}-{self.sandbox_id}", daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def pending(self) -> bool:
        """Whether pages are still being transferred."""
        return not self._finished.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until every page is in the restored processes.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            CriuError: the transfer failed (the tree was killed).
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(f"sandbox {self.sandbox_id}: pages still arriving after {timeout} s")
        if self.error is not None:
            raise self.error

    def _fail(self, detail: str, fix: str) -> None:
        if self.error is None:
            self.error = CriuError(self.sandbox_id, "lazy-pages", detail, str(self.log), fix)
        if self._kill_tree is not None:
            self._kill_tree()  # first: while a page is missing, its process waits, harmless

    def _watch_daemon(self) -> None:
        assert self._daemon is not None
        code = self._daemon.wait()
        try:
            if code == 0 and self.error is None:
                (self.state / "done").touch()
            elif not self._stopping:
                what = f"status {code}" if code >= 0 else f"signal {-code}"
                detail = _first_error(self.log) or f"the daemon ended with {what}"
                self._fail(
                    f"pages stopped arriving: {detail}; the tree was killed so that it never "
                    "runs on memory that was not restored",
                    "restore again (normally, or lazily once the cause is fixed)",
                )
        finally:
            self.finished_at = time.perf_counter()
            if self.source is not None:
                self.source.close()
            self._finished.set()

    def _serve(self) -> None:
        """Answer the daemon's PS_IOV_GET requests with the source's pages. A broken
        connection is the daemon's end, reported by `_watch_daemon`; a failing source is
        reported here."""
        assert self._sock is not None and self.source is not None
        sock = self._sock
        try:
            while True:
                header = _recv_exact(sock, _PSI.size)
                if header is None:
                    return
                cmd, nr_pages, vaddr, dst_id = _PSI.unpack(header)
                if cmd in (_PS_IOV_CLOSE, _PS_IOV_FORCE_CLOSE):
                    sock.sendall(struct.pack("<i", 0))
                    return
                try:
                    if cmd != _PS_IOV_GET:
                        raise ValueError(f"unexpected page-server command {cmd:#x}")
                    data = self.source.read(dst_id, vaddr, nr_pages)
                    if len(data) != nr_pages * _PAGE:
                        raise ValueError(f"{len(data)} bytes for {nr_pages} pages at {vaddr:#x}")
                except Exception as exc:
                    if not self._stopping:
                        self._fail(
                            f"the page source failed: {exc}; the tree was killed so that it "
                            "never runs on memory that was not restored",
                            "see the error; restore an older snapshot or restore normally",
                        )
                    return
                flags = _PE_PRESENT << _PS_CMD_BITS | _PS_IOV_ADD_F
                sock.sendall(_PSI.pack(flags, nr_pages, vaddr, dst_id))
                sock.sendall(data)
                self.served_pages += nr_pages
        except (OSError, ValueError):
            return  # the daemon's side is gone: _watch_daemon reports why
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        """End the transfer (the tree must already be dead or about to be killed)."""
        self._stopping = True
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        if self._daemon is not None and self._daemon.poll() is None:
            self._daemon.kill()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._daemon is not None:
            self._daemon.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        if not self._threads and self.source is not None:
            self.source.close()
        self._finished.set()
        if self._keeper is not None:
            if self._keeper.poll() is None:  # it ends with the tree; until then, make it
                try:
                    self._keeper.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self._keeper.kill()
            self._keeper.wait()


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            if data:
                raise ValueError("the daemon closed the connection mid-request")
            return None
        data += part
    return data


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _first_error(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.strip() for line in lines if "Error" in line and "RLIMIT_NOFILE" not in line]
    return errors[0] if errors else None
