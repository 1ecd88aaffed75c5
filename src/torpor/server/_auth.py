"""The API token: where it comes from, and checking a request's bearer token against it."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

from .._errors import ConfigError

__all__ = ["TOKEN_FILE", "TokenSource", "check_bearer", "load_or_create_token"]

TOKEN_FILE = "api-token"

# Where the token came from, so `torpor server` prints a generated one exactly once.
TokenSource = Literal["env", "file", "generated"]


def load_or_create_token(home: Path) -> tuple[str, TokenSource]:
    """``TORPOR_API_TOKEN``, else the token in ``$TORPOR_HOME/api-token``, else a new one
    written there (mode 0600) on first start."""
    env = os.environ.get("TORPOR_API_TOKEN")
    if env:
        return env, "env"
    path = home / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the API token at {path}: {exc}") from None
    if token:
        return token, "file"
    token = "tp_" + secrets.token_urlsafe(32)
    home.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two servers starting at once must not each write (and print) a different token;
    # the loser reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_token(home)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the API token to {path}: {exc}; set TORPOR_API_TOKEN instead"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, "generated"


def check_bearer(header: str | None, token: str) -> bool | None:
    """None if there is no bearer token, else whether it is the right one.

    The comparison takes the same time wherever the first wrong character is, so the token
    cannot be guessed one character at a time.
    """
    if not header:
        return None
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return hmac.compare_digest(given.strip().encode(), token.encode())
