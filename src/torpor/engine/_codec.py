"""Values in and out of the journal: JSON with dataclasses and pydantic models, argument
hashes, and exceptions recorded so that replay raises what the first execution raised."""

from __future__ import annotations

import hashlib
import importlib
import json
import traceback
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

from .._errors import TorporError

__all__ = [
    "RecordedError",
    "args_hash",
    "decode_error",
    "encode_error",
    "from_json",
    "to_json",
]

_PLAIN = (str, int, float, bool, type(None))
_PLAIN_TYPES = frozenset({str, int, float, bool, dict, list})


class Unrecordable(Exception):
    """The value has a type JSON, dataclasses and pydantic cannot express."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


def to_json(value: Any) -> Any:
    """A JSON-compatible form of ``value``; `Unrecordable` names the type that is not."""
    if isinstance(value, _PLAIN):
        return value
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        raise Unrecordable(_unrecordable_type(value)) from None


def _unrecordable_type(value: Any) -> str:
    """The innermost type that has no JSON form, for the error message."""
    items: list[Any]
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return f"{type(value).__module__}.{type(value).__qualname__}"
    for item in items:
        try:
            to_jsonable_python(item)
        except PydanticSerializationError:
            return _unrecordable_type(item)
    return type(value).__qualname__  # pragma: no cover


@lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def from_json(value: Any, annotation: Any) -> Any:
    """Rebuild a recorded value as the annotated type (a dataclass, a model, list[...])."""
    if annotation is None or annotation is Any or value is None:
        return value
    if annotation in _PLAIN_TYPES and type(value) is annotation:
        return value  # the common case needs no validator (building one costs ~ms)
    try:
        return _adapter(annotation).validate_python(value)
    except TypeError:  # an annotation pydantic cannot use (e.g. a forward reference)
        return value


def args_hash(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short fingerprint of a call's arguments, to notice a replay calling with others."""
    plain = to_jsonable_python([args, kwargs], fallback=repr)
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class RecordedError(TorporError):
    """A recorded step error whose exception type could not be rebuilt on replay."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.error_message = message


def encode_error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    try:
        args: Any = to_json(list(exc.args))
        json.dumps(args)
    except (Unrecordable, TypeError, ValueError):
        args = None
    encoded: dict[str, Any] = {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "args": args,
        "traceback": "".join(traceback.format_exception(exc, limit=-8))[-4000:],
    }
    if isinstance(exc, TorporError):
        # torpor's errors take their structured fields, not their message, as arguments:
        # kept as fields, they come back as themselves (a FencedError with its epochs).
        try:
            fields = to_json(dict(vars(exc)))
            json.dumps(fields)
            encoded["fields"] = fields
        except (Unrecordable, TypeError, ValueError):
            pass
    return encoded


def decode_error(error: dict[str, Any]) -> BaseException:
    """The recorded exception, rebuilt as its own type where that can be done faithfully."""
    type_name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    module_name, _, qualname = type_name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name or "builtins")
        for part in qualname.split("."):
            obj = getattr(obj, part)
        fields = error.get("fields")
        if isinstance(obj, type) and issubclass(obj, TorporError) and isinstance(fields, dict):
            made: TorporError = obj.__new__(obj)
            Exception.__init__(made, message)
            made.__dict__.update(fields)
            return made
        if isinstance(obj, type) and issubclass(obj, Exception) and error.get("args") is not None:
            rebuilt = obj(*error["args"])
            if str(rebuilt) == message:
                return rebuilt
    except Exception:
        pass
    return RecordedError(type_name, message)
