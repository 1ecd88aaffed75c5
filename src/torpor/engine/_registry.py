"""Which workflow functions exist, under which names, and where a worker finds their code."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .._errors import TorporError, WorkflowNotFoundError

__all__ = [
    "WorkflowDef",
    "load_source",
    "load_workflow_ref",
    "lookup_workflow",
    "register_workflow",
    "source_of",
]


@dataclass(frozen=True)
class WorkflowDef:
    """A registered workflow: its name, function, and where its code lives."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    source: dict[str, str]


_registry: dict[str, WorkflowDef] = {}
_lock = threading.Lock()


def source_of(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The module name to use in workflow names, and how to import the function's code.

    A function defined in a script run as ``__main__`` is named after the script's file, so
    a worker that loads the file as a module finds it under the same name.
    """
    module = inspect.getmodule(fn)
    module_name = fn.__module__
    file = getattr(module, "__file__", None)
    if module_name == "__main__" or getattr(module, "__torpor_file__", False):
        if file is None:
            return module_name, {"module": module_name}
        path = str(Path(file).resolve())
        return Path(path).stem, {"file": path}
    if file is None:
        return module_name, {"module": module_name}
    # The file too: a worker whose sys.path lacks the module's folder can still load it.
    return module_name, {"module": module_name, "file": str(Path(file).resolve())}


def register_workflow(fn: Callable[..., Any], name: str | None) -> WorkflowDef:
    module_name, source = source_of(fn)
    wf = WorkflowDef(
        name=name or f"{module_name}.{fn.__qualname__}",
        fn=fn,
        is_async=inspect.iscoroutinefunction(fn),
        source=source,
    )
    with _lock:
        _registry[wf.name] = wf
    return wf


# Imports of workflow code are serialized: a module is in sys.modules before it finished
# executing, and a second thread must not take the half-made module for the loaded one.
_load_lock = threading.RLock()


def load_source(source: dict[str, str]) -> None:
    """Import the module or file a workflow was registered from."""
    with _load_lock:
        _load_source(source)


def _load_source(source: dict[str, str]) -> None:
    if "module" in source:
        try:
            importlib.import_module(source["module"])
            return
        except ModuleNotFoundError:
            if "file" not in source:
                raise
        _load_file(Path(source["file"]), source["module"], script=False)
        return
    _load_file(Path(source["file"]), Path(source["file"]).stem, script=True)


def _load_file(path: Path, name: str, *, script: bool) -> ModuleType:
    """Execute ``path`` as the module ``name`` (once); a ``script`` is named by its file."""
    if not path.is_file():
        raise TorporError(f"{path} does not exist")
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TorporError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    module.__torpor_file__ = script  # type: ignore[attr-defined]
    # The file's own folder first, so it imports its neighbours as when run as a script.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def lookup_workflow(name: str, source: dict[str, str] | None = None) -> WorkflowDef:
    """The workflow registered as ``name``, importing its source first if need be."""
    wf = _registry.get(name)
    if wf is not None:
        return wf
    if not source:
        raise WorkflowNotFoundError(name, "it is not registered in this process")
    try:
        load_source(source)
    except Exception as exc:
        where = source.get("module") or source.get("file")
        raise WorkflowNotFoundError(name, f"importing {where} failed: {exc}") from None
    wf = _registry.get(name)
    if wf is None:
        where = source.get("module") or source.get("file")
        raise WorkflowNotFoundError(name, f"{where} defines no @torpor.workflow of that name")
    return wf


def load_workflow_ref(ref: str) -> WorkflowDef:
    """The workflow ``ref`` names: ``FILE:FUNC``, a Python file and a function in it (the
    file is imported once; a plain function becomes a workflow named after it), or the name
    of a workflow registered in this process.

    Raises:
        WorkflowNotFoundError: ``ref`` names nothing loadable; ``reason`` says what was
            wrong and how to fix it.
    """
    file, sep, func = ref.rpartition(":")
    if not sep:
        wf = _registry.get(ref)
        if wf is None:
            raise WorkflowNotFoundError(
                ref,
                "it is not registered in this process; give it as FILE:FUNC (e.g. "
                "agent.py:main), or import its module first (--import MODULE_OR_FILE)",
            )
        return wf
    if not file or not func:
        raise WorkflowNotFoundError(ref, "give the workflow as FILE:FUNC, e.g. agent.py:main")
    path = Path(file).resolve()
    if not path.is_file():
        raise WorkflowNotFoundError(
            ref, f"{file} is not a Python file on this machine: no such file"
        )
    if path.suffix != ".py":
        raise WorkflowNotFoundError(
            ref, f"{file} is not a Python file (FILE:FUNC names a .py file)"
        )
    with _load_lock:
        try:
            module = _load_file(path, path.stem, script=True)
        except (Exception, SystemExit) as exc:  # a script may call sys.exit() when imported
            raise WorkflowNotFoundError(
                ref, f"importing {file} failed: {type(exc).__name__}: {exc}"
            ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        found = sorted(name for name, value in vars(module).items() if _decorated(value))
        hint = f"; its workflows: {', '.join(found)}" if found else ""
        raise WorkflowNotFoundError(ref, f"{file} has no function {func!r}{hint}")
    return _decorated(fn) or register_workflow(fn, None)


def _decorated(value: Any) -> WorkflowDef | None:
    """The workflow ``value`` was registered as by ``@torpor.workflow``, if it was."""
    wf = getattr(value, "__torpor_workflow__", None)
    return wf if isinstance(wf, WorkflowDef) else None
