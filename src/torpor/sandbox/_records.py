"""The records a sandbox keeps on disk: ``checkpoint.json`` and ``sandbox.json``.

A checkpoint directory holds ``images/`` (CRIU's), copies of ``upper/``, ``workspace/`` and
``run/`` taken while the tree was frozen, ``dump.log``, ``checkpoint.json`` and
``base-root.json`` (the host files its processes had mapped, see `_fingerprint.py`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._errors import SandboxError

__all__ = ["PAGES_ELSEWHERE", "Checkpoint", "read_sandbox_meta", "write_json"]

#: A file in a checkpoint directory whose ``pages-*.img`` hold only the pages a lazy restore
#: reads itself (the rest are holes): restoring it needs the `PageSource` that has them.
PAGES_ELSEWHERE = "pages-elsewhere"


@dataclass(frozen=True)
class Checkpoint:
    """A sandbox frozen at one moment: CRIU images plus its root and workspace layers.

    Times are seconds: ``dump_seconds`` is CRIU's dump including ``layers_seconds``, the copy
    of the layers made while the tree was frozen; ``total_seconds`` is the whole call. Sizes
    are raw bytes, before any compression or deduplication.
    """

    directory: Path
    sandbox_id: str
    created_at: float
    cmd: list[str]
    base_root: str
    network: bool
    memory_limit: int | None
    pids_limit: int | None
    leave_running: bool
    dump_seconds: float
    layers_seconds: float
    total_seconds: float
    image_bytes: int
    layer_bytes: int
    #: CPUs (a CFS quota), or None; checkpoints written before it was recorded have none.
    cpu_limit: float | None = None

    @property
    def images(self) -> Path:
        return self.directory / "images"

    @property
    def pages_complete(self) -> bool:
        """Whether the page images hold all the memory (False after a lazy load)."""
        return not (self.directory / PAGES_ELSEWHERE).exists()

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Checkpoint:
        """Read a checkpoint back from its directory.

        Raises:
            SandboxError: the directory holds no complete checkpoint.
        """
        path = Path(directory).absolute()
        try:
            fields = json.loads((path / "checkpoint.json").read_text())
        except (OSError, ValueError) as exc:
            raise SandboxError(
                "?",
                f"{path} holds no readable checkpoint ({exc})",
                "pass the directory that Sandbox.checkpoint() wrote",
            ) from None
        return cls(directory=path, **fields)

    def _save(self) -> None:
        fields = asdict(self)
        del fields["directory"]
        write_json(self.directory / "checkpoint.json", fields)


def read_sandbox_meta(directory: Path) -> dict[str, Any] | None:
    """The sandbox.json of a sandbox directory, or None if it has none (or a torn one)."""
    try:
        meta = json.loads((directory / "sandbox.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)
