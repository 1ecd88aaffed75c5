"""The workflow engine both roads run on: workflows, steps and the durable primitives, the
registry, the codec, and the execution of a run against its journal."""

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
