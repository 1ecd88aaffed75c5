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

__all__ = ["Provider", "non_retryable_errors", "parse_model"]

_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_BASE_URLS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


class ModelConfigError(TorporError):
    """The model string or the provider's settings are unusable."""


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
