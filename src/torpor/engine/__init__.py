"""The workflow engine both roads run on: workflows, steps and the durable primitives, the
registry, the codec, and the execution of a run against its `Journal`.

Besides the public API (re-exported by `torpor`), this is the engine's interface to the
rest of torpor: the journal seam and its store-backed implementation, host calls, the
registry and the codec.
"""

from ._codec import (
    RecordedError,
    Unrecordable,
    decode_error,
    encode_error,
    from_json,
    to_json,
)
from ._context import (
    Interrupt,
    Parked,
    WorkflowContext,
    current,
    in_step,
)
from ._engine import encode_input, execute_run
from ._journal import (
    ChildSpec,
    HostCall,
    HostCallOutcome,
    Journal,
    lookup_host_call,
    register_host_call,
)
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
from ._registry import (
    WorkflowDef,
    load_source,
    load_workflow_ref,
    lookup_workflow,
    register_workflow,
    source_of,
)
from ._steps import (
    Step,
    StepOptions,
    attempt_with_retries,
    execute_host_call,
    step,
    workflow,
    workflow_def,
)
from ._store_journal import StoreJournal, create_child, end_run, lineage

__all__ = [
    "ChildSpec",
    "HostCall",
    "HostCallOutcome",
    "Interrupt",
    "Journal",
    "Parked",
    "RecordedError",
    "Step",
    "StepOptions",
    "StoreJournal",
    "Unrecordable",
    "WorkflowContext",
    "WorkflowDef",
    "attempt_with_retries",
    "checkpoint",
    "create_child",
    "current",
    "decode_error",
    "encode_error",
    "encode_input",
    "end_run",
    "execute_host_call",
    "execute_run",
    "from_json",
    "idempotency_key",
    "in_step",
    "lineage",
    "load_source",
    "load_workflow_ref",
    "lookup_host_call",
    "lookup_workflow",
    "now",
    "patched",
    "random",
    "register_host_call",
    "register_workflow",
    "sleep",
    "source_of",
    "step",
    "to_json",
    "uuid4",
    "wait_for_event",
    "workflow",
    "workflow_def",
]
