"""`torpor worker`: claim runs from the store and execute them until told to stop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from .._errors import StoreUnavailableError
from ..store import Store
from ._executor import Executor

__all__ = ["Worker"]

log = logging.getLogger("torpor.worker")


class Worker:
    """Claims runnable runs (queued, due, or abandoned by a dead worker) and executes them.

    Args:
        concurrency: runs executed at once.
        queues: only runs of these queues (all queues if None).
        queue_limits: queue -> the most runs of it executing at once over all workers
            (give every worker the same limits).
        lease_seconds: how long a claim lasts without renewal; a dead worker's runs are
            taken over after this.
        park_after: seconds a run may block in a wait before its lease is released.
        poll: seconds between claim attempts when nothing is runnable.
    """

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int = 1,
        queues: Sequence[str] | None = None,
        queue_limits: Mapping[str, int] | None = None,
        lease_seconds: float = 30.0,
        park_after: float | None = 5.0,
        poll: float = 0.2,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.concurrency = max(1, concurrency)
        self.queues = list(queues) if queues else None
        self.queue_limits = dict(queue_limits) if queue_limits else None
        self.poll = poll
        self.executor = Executor(
            store,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            park_after=park_after,
            queue_limits=self.queue_limits,
        )
        self.stop_claiming = threading.Event()

    @property
    def id(self) -> str:
        return self.executor.worker_id

    def run(self, on_event: Callable[[str], None] | None = None) -> None:
        """Claim and execute until `stop()`; then wait for runs to reach a boundary."""
        say = on_event or (lambda _: None)
        idle = self.poll
        while not self.stop_claiming.is_set():
            if self.executor.active >= self.concurrency:
                self.stop_claiming.wait(0.05)
                continue
            try:
                claimed = self.executor.claim(self.queues)
            except StoreUnavailableError as exc:
                # A database restart or failover: keep trying, backing off to 2 s.
                log.warning("the store is unreachable (%s); claiming again in %.1f s",
                            exc.reason, idle)  # fmt: skip
                claimed = False
            except Exception:
                log.warning("claiming failed; retrying", exc_info=True)
                claimed = False
            if claimed:
                idle = self.poll
                continue
            self.stop_claiming.wait(idle)
            idle = min(idle * 2, 2.0)
        say(f"stopping: {self.executor.active} run(s) in flight finish their current step")

    def stop(self, grace: float = 30.0) -> bool:
        """Stop claiming; runs go back to the queue at their next step boundary."""
        self.stop_claiming.set()
        self.executor.stopping.set()
        done = self.executor.join(grace)
        self.executor.close()
        return done

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop claiming; a second one exits at once (leases then expire)."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.stop_claiming.is_set():
                raise SystemExit(128 + signum)
            self.stop_claiming.set()
            self.executor.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
