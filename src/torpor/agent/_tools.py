"""Tools an agent's model can call: typed Python functions, their JSON schemas, and the
builtins that work in the run's workspace."""

from __future__ import annotations

import contextvars
import inspect
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from .._errors import TorporError
from ..engine import sleep as durable_sleep
from ..engine import wait_for_event
from ._items import ToolSpec

__all__ = ["BUILTIN_TOOLS", "Tool", "ToolOutcome", "current_workspace", "tool"]

# The workspace of the agent run executing on this thread (or task).
current_workspace: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "torpor_workspace", default=None
)

_OUTPUT_CAP = 16_000


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False


def _doc_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's summary and its ``Args:`` descriptions (Google style)."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0].strip()
    params: dict[str, str] = {}
    section = re.search(r"^Args:\s*\n((?:[ \t]+.+\n?)+)", doc, re.M)
    if section:
        for line in section.group(1).splitlines():
            match = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)", line)
            if match:
                params[match.group(1)] = match.group(2).strip()
    return summary, params


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with its argument schema."""

    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[pydantic.BaseModel]

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None) -> Tool:
        if isinstance(fn, Tool):
            return fn
        summary, described = _doc_parts(fn)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TorporError(f"tool {fn.__qualname__}: *args/**kwargs cannot be described")
            annotation = param.annotation if param.annotation is not param.empty else Any
            default = param.default if param.default is not param.empty else ...
            fields[param.name] = (
                annotation,
                pydantic.Field(default, description=described.get(param.name)),
            )
        tool_name = name or fn.__name__
        model = pydantic.create_model(f"{tool_name}_arguments", **fields)
        return cls(tool_name, summary or tool_name, fn, model)

    def spec(self) -> ToolSpec:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return ToolSpec(name=self.name, description=self.description, parameters=schema)

    def call(self, arguments: Any, raw_arguments: str | None = None) -> ToolOutcome:
        """Validate and run; any failure becomes an error result for the model to read."""
        if arguments is None:
            return ToolOutcome(
                f"the arguments for {self.name} were not a JSON object: {raw_arguments!r}; "
                "call the tool again with a JSON object matching its schema",
                True,
            )
        try:
            parsed = self.arguments.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
                for err in exc.errors()
            )
            return ToolOutcome(f"invalid arguments for {self.name}: {problems}", True)
        try:
            result = self.fn(**{k: getattr(parsed, k) for k in type(parsed).model_fields})
        except Exception as exc:
            return ToolOutcome(f"{type(exc).__name__}: {exc}", True)
        return ToolOutcome(_render(result))


def _render(result: Any) -> str:
    if isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(pydantic.TypeAdapter(Any).dump_python(result, mode="json"))
        except Exception:
            text = repr(result)
    if len(text) > _OUTPUT_CAP:
        text = text[:_OUTPUT_CAP] + f"\n… [{len(text) - _OUTPUT_CAP} more characters cut]"
    return text


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark a function as a tool (optional: plain typed functions work as tools too)."""

    def decorate(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name)

    return decorate(fn) if fn is not None else decorate


# -- builtins ------------------------------------------------------------------------------


def _workspace() -> Path:
    ws = current_workspace.get()
    if ws is None:
        raise TorporError("no workspace: builtin tools run inside an agent run")
    ws.mkdir(parents=True, exist_ok=True)
    return ws


def _inside(path: str) -> Path:
    root = _workspace().resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{path!r} is outside the workspace; use a path relative to it")
    return target


def shell(command: str, timeout: float = 60.0) -> str:
    """Run a shell command in the workspace and return its exit code and output.

    Args:
        command: the command line, run by /bin/sh in the workspace directory.
        timeout: seconds before the command is killed.
    """
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=_workspace(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        return f"timed out after {timeout:g} s\n{out}"
    output = (proc.stdout + proc.stderr)[-_OUTPUT_CAP:]
    return f"exit code {proc.returncode}\n{output}"


def read_file(path: str) -> str:
    """Read a text file of the workspace.

    Args:
        path: the file's path, relative to the workspace.
    """
    return _inside(path).read_text()


def write_file(path: str, content: str) -> str:
    """Write (create or replace) a text file in the workspace.

    Args:
        path: the file's path, relative to the workspace.
        content: the whole new content.
    """
    target = _inside(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    return f"wrote {len(content.encode())} bytes to {path}"


def list_files(path: str = ".") -> str:
    """List the files under a directory of the workspace.

    Args:
        path: the directory, relative to the workspace.
    """
    root = _inside(path)
    base = _workspace().resolve()
    names = sorted(str(p.relative_to(base)) for p in root.rglob("*") if p.is_file())
    return "\n".join(names) if names else "(no files)"


def ask_human(question: str) -> str:
    """Ask a human and wait (durably, for as long as it takes) for the answer.

    Args:
        question: what to ask; it is recorded in the run's log.
    """
    answer = wait_for_event("human")
    if isinstance(answer, dict) and "text" in answer:
        return str(answer["text"])
    return answer if isinstance(answer, str) else json.dumps(answer)


def sleep(seconds: float) -> str:
    """Sleep durably (the run may be parked and resumed by any worker).

    Args:
        seconds: how long.
    """
    durable_sleep(seconds)
    return f"slept {seconds:g} s"


BUILTIN_TOOLS: dict[str, Callable[..., Any]] = {
    "shell": shell,
    "read_file": read_file,
    "write_file": write_file,
    "list_files": list_files,
    "ask_human": ask_human,
    "sleep": sleep,
}
