"""Model providers through the official SDKs: OpenAI Chat Completions and Anthropic
Messages. Keys come from the environment and are never logged or recorded."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import TorporError
from ._items import ModelReply, ToolSpec, items_from_json
from ._wire import anthropic_reply, anthropic_request, openai_reply, openai_request

__all__ = [
    "ModelCallRefusedError",
    "Provider",
    "check_sandboxed_model_call",
    "configured_base_url",
    "non_retryable_errors",
    "parse_model",
]

_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_BASE_URLS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
# Where the SDKs send calls when neither the code nor the environment names an endpoint.
_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


class ModelConfigError(TorporError):
    """The model string or the provider's settings are unusable."""


class ModelCallRefusedError(ModelConfigError):
    """A sandbox asked for a model call the worker does not make for it."""


def configured_base_url(provider: str) -> str:
    """The endpoint this process sends ``provider``'s calls to when none is named: its
    ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``, else the provider's own."""
    return os.environ.get(_BASE_URLS[provider]) or _DEFAULT_BASE_URLS[provider]


def _same_url(a: str, b: str) -> bool:
    return a.strip().rstrip("/") == b.strip().rstrip("/")


def check_sandboxed_model_call(request: dict[str, Any]) -> None:
    """Refuse a model call from a sandbox that would send this worker's API key anywhere but
    to the endpoint the worker is configured with (code in a sandbox is untrusted: with its
    own ``base_url`` it would receive the key). No ``base_url``, or the configured one, is
    fine; the call then goes where the worker's configuration says."""
    provider = request.get("provider")
    if provider not in _KEYS:
        raise ModelCallRefusedError(
            f"model call refused: provider {provider!r} is not one of {', '.join(sorted(_KEYS))}"
        )
    base_url = request.get("base_url")
    if base_url is None or base_url == "":
        return
    configured = configured_base_url(provider)
    if not isinstance(base_url, str) or not _same_url(base_url, configured):
        raise ModelCallRefusedError(
            f"model call refused: base_url {base_url!r} is not where this worker sends "
            f"{provider} calls ({configured}); code in a sandbox cannot choose the endpoint: "
            f"leave base_url unset and set {_BASE_URLS[provider]} in the worker's environment"
        )


def parse_model(model: str) -> tuple[str, str]:
    """``"openai:gpt-4.1-mini"`` → ``("openai", "gpt-4.1-mini")``."""
    provider, sep, name = model.partition(":")
    if not sep or provider not in _KEYS or not name:
        raise ModelConfigError(
            f"model {model!r}: write it as PROVIDER:MODEL with PROVIDER one of "
            f"{', '.join(sorted(_KEYS))}, e.g. 'openai:gpt-4.1-mini' or "
            "'anthropic:claude-sonnet-4-5'"
        )
    return provider, name


@dataclass
class Provider:
    """A configured provider: checks its key up front, creates its SDK client lazily."""

    provider: str
    model: str
    base_url: str | None = None
    max_tokens: int = 4096
    timeout: float = 600.0
    # One SDK client per provider and key: building one costs tens of milliseconds.
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_model(cls, model: str, base_url: str | None = None, **kwargs: Any) -> Provider:
        provider, name = parse_model(model)
        made = cls(provider, name, base_url or os.environ.get(_BASE_URLS[provider]), **kwargs)
        made.check_key()
        return made

    def check_key(self) -> None:
        variable = _KEYS[self.provider]
        if not os.environ.get(variable):
            raise ModelConfigError(
                f"no API key for {self.provider}: set {variable} (for a local server that "
                "needs none, any value works)"
            )

    def complete(
        self, system: str, items: Sequence[dict[str, Any]], tools: Sequence[ToolSpec]
    ) -> ModelReply:
        """One model call. Raises the SDK's errors: torpor's step retries decide."""
        self.check_key()
        key = os.environ[_KEYS[self.provider]]
        conversation = items_from_json(list(items))
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self._make_client(key)
        if self.provider == "openai":
            body = openai_request(self.model, system, conversation, list(tools), self.max_tokens)
            response = client.chat.completions.create(**body)
            return openai_reply(response.model_dump())
        body = anthropic_request(self.model, system, conversation, list(tools), self.max_tokens)
        message = client.messages.create(**body)
        return anthropic_reply(message.model_dump())

    def _make_client(self, key: str) -> Any:
        # The SDKs' own retries are off: torpor's step retries are the one retry layer.
        if self.provider == "openai":
            import openai

            return openai.OpenAI(
                api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout
            )
        import anthropic

        return anthropic.Anthropic(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout
        )


@functools.cache
def non_retryable_errors() -> tuple[type[BaseException], ...]:
    """SDK errors that no retry fixes: bad keys, bad requests, unknown models."""
    errors: list[type[BaseException]] = [ModelConfigError]
    try:
        import openai

        errors += [
            openai.AuthenticationError,
            openai.BadRequestError,
            openai.NotFoundError,
            openai.PermissionDeniedError,
        ]
    except ImportError:  # pragma: no cover - the SDKs are dependencies
        pass
    try:
        import anthropic

        errors += [
            anthropic.AuthenticationError,
            anthropic.BadRequestError,
            anthropic.NotFoundError,
            anthropic.PermissionDeniedError,
        ]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)
