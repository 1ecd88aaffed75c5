"""`torpor worker` subprocesses for tests, benchmarks and the demo: started with an
environment, logged to a file, killed, stopped, paused, and always waited for."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self, TypedDict, Unpack

from ._wait import wait_until

__all__ = ["WorkerGroup", "WorkerProcess"]


_GRACE = 30.0  # seconds a worker gets to stop before it is killed, by default


class _Options(TypedDict, total=False):
    """How a worker process is started and stopped, beyond its arguments, environment and
    log (see `WorkerProcess`)."""

    own_session: bool
    cwd: str | os.PathLike[str] | None
    grace: float


class _Closing:
    """A context manager whose exit is `close`, also when the block raises."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WorkerProcess(_Closing):
    """One `torpor worker` subprocess, its stdout and stderr appended to a log file.

    It starts when made. Every way of ending it waits for it, so no process is left
    running or unreaped; as a context manager it is stopped on exit, also when the block
    raises.

    Args:
        *args: arguments of `torpor worker`, e.g. ``"--lease", "1.5"``.
        env: its whole environment (default: this process's).
        log: the file its output is appended to (its folder is made if missing).
        own_session: start it in a session of its own and send every signal to its
            process group, so that the commands its runs started end with it.
        cwd: its working directory.
        grace: seconds `close` gives it to stop before killing it.

    Example:
        with WorkerProcess("--lease", "2", env=env, log=tmp_path / "worker.log") as worker:
            wait_until(lambda: store.get_run(run_id).status is RunStatus.RUNNING)
            worker.kill()
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        log: str | os.PathLike[str],
        own_session: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        grace: float = _GRACE,
    ) -> None:
        self.args = args
        self.log_path = Path(log)
        self.own_session = own_session
        self.grace = grace
        self._terminated = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Where this worker's own lines begin (a log may be shared with earlier workers).
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:  # the child holds its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "torpor", "worker", *args],
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=own_session,
                cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once waited for (negative: the signal that ended it), else None."""
        return self.process.returncode

    def poll(self) -> int | None:
        """Its exit status if it has ended (it is then waited for), else None."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to end; its exit status.

        Raises:
            subprocess.TimeoutExpired: it still runs after ``timeout`` seconds.
        """
        return self.process.wait(timeout)

    def log(self) -> str:
        """What it has written so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to it (to its process group with ``own_session``) unless it was
        already waited for: its pid may be another process's by then."""
        if self.process.returncode is not None:
            return
        if self.own_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL it and wait for it; its exit status."""
        self.send_signal(signal.SIGKILL)
        return self.process.wait()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM it (a worker releases its runs and exits) and wait; SIGKILL it if it has
        not ended after ``timeout`` seconds. Its exit status (0: it stopped cleanly)."""
        self._terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def pause(self) -> None:
        """SIGSTOP it: it holds its leases but does nothing until `resume`."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it."""
        self.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop it if it still runs (see `stop`, with ``grace``), else wait for it."""
        if self.process.returncode is None:
            self.stop(self.grace)

    def ready(self, timeout: float = 60.0) -> bool:
        """Wait until it says it is claiming (its signal handlers are in place), or it ended;
        whether it did say so within ``timeout`` seconds."""
        try:
            wait_until(lambda: self._claiming() or self.process.poll() is not None,
                       "the worker to start claiming", timeout=timeout, interval=0.02)  # fmt: skip
        except TimeoutError:
            return False
        return self._claiming()

    def _claiming(self) -> bool:
        # Its own lines only: the log may be shared with earlier workers.
        with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return any(line.startswith(b"worker ") for line in f)
        return False

    def _terminate(self) -> None:
        # Once only: a worker exits at once, without releasing its runs, on a second signal.
        if not self._terminated:
            self._terminated = True
            # A worker still importing dies of SIGTERM instead of stopping cleanly: on a
            # loaded machine the runs may all have ended before a new worker got that far.
            self.ready()
            self.send_signal(signal.SIGTERM)
            self.send_signal(signal.SIGCONT)  # a paused process acts on SIGTERM only then

    def __repr__(self) -> str:
        return f"<WorkerProcess pid {self.pid} returncode {self.returncode} log {self.log_path}>"


class WorkerGroup(_Closing):
    """`torpor worker` subprocesses sharing arguments and an environment, each with its own
    log (``worker-0.log``, ``worker-1.log``, ... under ``logs``); all stopped together.

    Args:
        *args: arguments every worker gets (one started may add more; for an option given
            twice, the later one counts).
        env: their environment, read at each `start` (default: this process's).
        logs: the folder of their logs.
        **options: ``own_session``, ``cwd`` and ``grace``, for each worker (see
            `WorkerProcess`); ``grace`` is also what `close` gives them.

    Example:
        with WorkerGroup("--lease", "1.5", env=env, logs=tmp_path / "logs") as workers:
            first = workers.start(TORPOR_TEST_HANG="step:2")
            first.kill()
            workers.start()
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        logs: str | os.PathLike[str],
        **options: Unpack[_Options],
    ) -> None:
        self.args = args
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.logs = Path(logs)
        self.options = options
        self.workers: list[WorkerProcess] = []

    def start(self, *args: str, **env: str) -> WorkerProcess:
        """Start one more worker, with these arguments after the group's and these
        variables added to its environment."""
        worker = WorkerProcess(
            *self.args,
            *args,
            env={**self.env, **env},
            log=self.logs / f"worker-{len(self.workers)}.log",
            **self.options,
        )
        self.workers.append(worker)
        return worker

    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """Stop every worker at once (see `WorkerProcess.stop`); their exit statuses, in
        the order they were started."""
        for worker in self.workers:
            if worker.returncode is None:
                worker._terminate()
        return [worker.stop(timeout) for worker in self.workers]

    def close(self) -> None:
        """`stop_all` with the group's ``grace``; every worker is waited for."""
        try:
            self.stop_all(self.options.get("grace", _GRACE))
        finally:
            for worker in self.workers:  # after an error above: none is left behind
                if worker.returncode is None:
                    worker.kill()

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(self.workers)
