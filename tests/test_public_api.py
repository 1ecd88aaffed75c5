"""The public surface is deliberate: adding or removing a name must change this test."""

import torpor

EXPECTED = {
    "Agent",
    "AgentMaxTurnsError",
    "Client",
    "tool",
    "ConfigError",
    "ContextLog",
    "Event",
    "FencedError",
    "LogConflictError",
    "LogEntry",
    "NondeterminismError",
    "PayloadTooLargeError",
    "RecordedError",
    "Road",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunNotFoundError",
    "RunRecord",
    "RunStateError",
    "RunStatus",
    "SchemaVersionError",
    "Settings",
    "SnapshotRecord",
    "StepResultError",
    "StepTimeoutError",
    "Store",
    "StoreUnavailableError",
    "Timer",
    "TorporError",
    "Worker",
    "WorkflowNotFoundError",
    "__version__",
    "cancel",
    "checkpoint",
    "configure",
    "fork",
    "idempotency_key",
    "now",
    "open_store",
    "patched",
    "random",
    "resume",
    "send",
    "sleep",
    "start",
    "step",
    "uuid4",
    "wait_for_event",
    "workflow",
}


def test_public_names_are_exactly_these() -> None:
    assert set(torpor.__all__) == EXPECTED
    for name in torpor.__all__:
        assert hasattr(torpor, name), name


def test_errors_share_one_root() -> None:
    for name in torpor.__all__:
        obj = getattr(torpor, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, torpor.TorporError), name
