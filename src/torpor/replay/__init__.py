"""The replay road: workflows whose steps are journaled in the context log and replayed
from it after a crash."""

from ._codec import RecordedError
from ._primitives import (
    checkpoint,
    idempotency_key,
    now,
    patched,
    random,
    sleep,
    uuid4,
    wait_for_event,
)
from ._steps import step, workflow

__all__ = [
    "RecordedError",
    "checkpoint",
    "idempotency_key",
    "now",
    "patched",
    "random",
    "sleep",
    "step",
    "uuid4",
    "wait_for_event",
    "workflow",
]
