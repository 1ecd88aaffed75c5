"""`torpor.Agent`: the model → tools → results loop, every model call and tool call durable."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._config import Settings
from .._errors import TorporError
from ..engine import (
    Step,
    StepOptions,
    WorkflowContext,
    current,
    load_source,
    register_host_call,
    source_of,
    workflow,
)
from ._items import ModelReply, ToolSpec, items_to_json
from ._providers import Provider, check_sandboxed_model_call, non_retryable_errors
from ._tools import BUILTIN_TOOLS, Tool, current_workspace

__all__ = ["MODEL_CALL", "Agent", "AgentMaxTurnsError", "call_model"]

# The host call that makes a model call (see `call_model`).
MODEL_CALL = "torpor.model"

# Builtins that wait durably: they run at the workflow level (their waits are journaled
# themselves), not inside a step.
_WAITING_TOOLS = {"ask_human", "sleep"}


class AgentMaxTurnsError(TorporError):
    """The model kept calling tools for ``max_turns`` turns without a final answer."""

    def __init__(self, max_turns: int) -> None:
        super().__init__(
            f"the agent made {max_turns} turns without a final answer; raise max_turns or "
            "tell the model (in the system prompt) when to stop"
        )
        self.max_turns = max_turns


class Agent:
    """An LLM agent whose model calls and tool calls are steps of the run it is in.

    Args:
        model: ``"openai:MODEL"`` or ``"anthropic:MODEL"``.
        tools: typed functions, or names of builtins: ``shell``, ``read_file``,
            ``write_file``, ``list_files``, ``ask_human``, ``sleep``.
        system: the system prompt.
        max_turns: model calls before giving up with `AgentMaxTurnsError`.
        base_url: an OpenAI-compatible (vLLM, Ollama, llama.cpp) or Anthropic endpoint;
            default from ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``. On the snapshot road
            the worker makes the call with its own key, so it refuses any ``base_url`` but
            the one it is configured with: set the variable in the worker's environment.
        workspace: the directory the builtins work in (default: one per run under
            ``$TORPOR_HOME/workspaces``).
        model_retries: retries of a failed model call (network errors, rate limits),
            with exponential backoff; the SDKs' own retries are off.

    A missing API key is an error here, before any run starts.
    """

    def __init__(
        self,
        model: str,
        tools: Sequence[Callable[..., Any] | str] = (),
        system: str = "",
        max_turns: int = 20,
        *,
        max_tokens: int = 4096,
        base_url: str | None = None,
        workspace: str | Path | None = None,
        model_retries: int = 4,
    ) -> None:
        self.model = model
        self.system = system
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.base_url = base_url
        self.workspace = Path(workspace) if workspace is not None else None
        self.model_retries = model_retries
        self._tool_refs = list(tools)
        self.tools: dict[str, Tool] = {}
        for ref in tools:
            fn = BUILTIN_TOOLS.get(ref) if isinstance(ref, str) else ref
            if fn is None:
                raise TorporError(
                    f"unknown builtin tool {ref!r}; builtins: {', '.join(sorted(BUILTIN_TOOLS))}"
                )
            made = Tool.from_function(fn)
            self.tools[made.name] = made
        self.provider = Provider.for_model(model, base_url, max_tokens=max_tokens)

    # -- running --------------------------------------------------------------------------

    def run(self, task: str) -> str:
        """Work on ``task`` until the model answers without calling tools; its answer.

        Inside a workflow every model call and tool call is journaled; outside one they are
        plain calls. ``torpor.start(agent.run, task)`` makes it a durable run of its own.
        """
        ctx = current()
        workspace = self._workspace_for(ctx)
        token = current_workspace.set(workspace)
        try:
            return self._loop(ctx, task)
        finally:
            current_workspace.reset(token)

    def _workspace_for(self, ctx: WorkflowContext | None) -> Path:
        if self.workspace is not None:
            return self.workspace
        if ctx is not None:
            return ctx.journal.workspace
        return Settings.from_env().home / "workspaces" / "scratch"

    def _loop(self, ctx: WorkflowContext | None, task: str) -> str:
        items: list[dict[str, Any]] = []
        items.append(self._journal(ctx, "user", "user", lambda: {"type": "user", "text": task}))
        specs = [t.spec() for t in self.tools.values()]
        for _turn in range(self.max_turns):
            # The model is called on the host (in the worker): API keys never enter a
            # sandbox, nor, therefore, a snapshot of its memory.
            request = {
                "provider": self.provider.provider,
                "model": self.provider.model,
                "base_url": self.provider.base_url,
                "max_tokens": self.max_tokens,
                "system": self.system,
                "items": list(items),
                "tools": [spec.to_json() for spec in specs],
            }
            if ctx is None:
                reply_json = call_model(request)
            else:
                reply_json = ctx.host_step(
                    MODEL_CALL, request, name="model", kind="model_call",
                    retries=self.model_retries, backoff=1.0, max_backoff=30.0,
                )  # fmt: skip
            reply = ModelReply.from_json(reply_json)
            said = items_to_json(reply.items)
            items.extend(said)
            calls = [item for item in said if item["type"] == "tool_call"]
            if not calls:
                return reply.text
            for call in calls:
                items.append(self._run_tool(ctx, call))
        raise AgentMaxTurnsError(self.max_turns)

    def _run_tool(self, ctx: WorkflowContext | None, call: dict[str, Any]) -> dict[str, Any]:
        name = str(call.get("name"))
        found = self.tools.get(name)

        def outcome() -> dict[str, Any]:
            if found is None:
                known = ", ".join(sorted(self.tools)) or "none"
                content, is_error = f"there is no tool {name!r}; tools: {known}", True
            else:
                result = found.call(call.get("arguments"), call.get("raw_arguments"))
                content, is_error = result.content, result.is_error
            return {"type": "tool_result", "id": call.get("id"), "content": content,
                    "is_error": is_error}  # fmt: skip

        if name in _WAITING_TOOLS and found is not None and ctx is not None:
            # The wait inside is journaled on its own; the result is recorded after it.
            done = outcome()
            return self._journal(ctx, "tool_result", name, lambda: done)
        return self._journal(ctx, "tool_result", name, outcome)

    def _journal(
        self,
        ctx: WorkflowContext | None,
        kind: str,
        name: str,
        body: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        options = StepOptions(
            name=name, retries=0, backoff=1.0, max_backoff=1.0, timeout=None,
            non_retryable=(), kind=kind,
        )  # fmt: skip
        result: dict[str, Any] = self._call(ctx, options, body)
        return result

    @staticmethod
    def _call(ctx: WorkflowContext | None, options: StepOptions, body: Callable[[], Any]) -> Any:
        if ctx is None:
            return body()
        return Step(body, options).call_sync(ctx, (), {})

    # -- starting as a run of its own -----------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """What a worker needs to rebuild this agent (tools by import location)."""
        refs: list[Any] = []
        for ref in self._tool_refs:
            if isinstance(ref, str):
                refs.append(ref)
            else:
                fn = ref.fn if isinstance(ref, Tool) else ref
                _, where = source_of(fn)
                refs.append({**where, "qualname": fn.__qualname__})
        return {
            "model": self.model,
            "tools": refs,
            "system": self.system,
            "max_turns": self.max_turns,
            "max_tokens": self.max_tokens,
            "base_url": self.base_url,
            "workspace": str(self.workspace) if self.workspace else None,
            "model_retries": self.model_retries,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Agent:
        tools: list[Callable[..., Any] | str] = []
        for ref in spec.get("tools", []):
            if isinstance(ref, str):
                tools.append(ref)
                continue
            load_source({k: v for k, v in ref.items() if k in ("module", "file")})
            module_name = ref.get("module") or Path(ref["file"]).stem
            obj: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
            for part in ref["qualname"].split("."):
                obj = getattr(obj, part)
            tools.append(obj.fn if isinstance(obj, Tool) else obj)
        return cls(
            spec["model"],
            tools,
            spec.get("system", ""),
            spec.get("max_turns", 20),
            max_tokens=spec.get("max_tokens", 4096),
            base_url=spec.get("base_url"),
            workspace=spec.get("workspace"),
            model_retries=spec.get("model_retries", 4),
        )

    def __torpor_start__(self, args: tuple[Any, ...]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """How `torpor.start(agent.run, task)` runs: as the generic agent workflow."""
        return run_agent, (self.spec(), *args)


@workflow(name="torpor.agent")
def run_agent(agent: dict[str, Any], task: str) -> str:
    """The workflow behind `torpor.start(agent.run, task)`."""
    return Agent.from_spec(agent).run(task)


@functools.lru_cache(maxsize=64)
def _provider(provider: str, model: str, base_url: str | None, max_tokens: int) -> Provider:
    """Providers keep their SDK clients (tens of milliseconds to build): one per setting."""
    return Provider(provider, model, base_url, max_tokens=max_tokens)


def call_model(request: dict[str, Any]) -> dict[str, Any]:
    """One model call, as the host makes it for an agent: the provider and model the agent
    named, with this process's API keys."""
    provider = _provider(
        str(request["provider"]),
        str(request["model"]),
        request.get("base_url"),
        int(request.get("max_tokens") or 4096),
    )
    tools = [ToolSpec.from_json(t) for t in request.get("tools", [])]
    reply: dict[str, Any] = provider.complete(
        request.get("system", ""), request["items"], tools
    ).to_json()
    return reply


# From a sandbox, a model call may not name an endpoint of its own: the worker's key would go
# there (see `check_sandboxed_model_call`).
register_host_call(
    MODEL_CALL,
    call_model,
    non_retryable=non_retryable_errors,
    check_sandboxed=check_sandboxed_model_call,
)
