"""torpor's replay road on SQLite or PostgreSQL: per-step overhead and workflows/second.

Run with torpor's own .venv. The same measurements, output and arguments as the other peers
(see _peer.py): one workflow of --steps trivial steps against an empty one, and --workflows
two-step workflows one after the other, each started with `torpor.start` and awaited with
`run.result()` in this process (torpor's embedded worker, as DBOS runs workflows in-process).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import _peer

import torpor
from torpor import Settings
from torpor.store import open_store

steps_workflow = _peer.steps_workflow(torpor.step(), torpor.workflow(name="bench.steps_workflow"))


def _call(n: int) -> int:
    return int(torpor.start(steps_workflow, n).result())


def _durability(store: Any, backend: str) -> str:
    if backend == "sqlite":
        with store._read() as tx:
            journal = tx.execute("PRAGMA journal_mode").fetchone()[0]
            sync = tx.execute("PRAGMA synchronous").fetchone()[0]
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return f"sqlite journal_mode={journal} synchronous={names.get(sync, sync)}"
    with store._read() as tx:
        shown = [
            f"{s}={tx.execute(f'SHOW {s}').fetchone()[0]}"
            for s in ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
        ]
    return "postgres " + " ".join(shown)


def _measure(result: _peer.Result, args: Any, workdir: Path) -> None:
    result.version = {"torpor": version("torpor")}
    if args.backend == "sqlite":
        if args.journal_mode.lower() != "wal":
            raise ValueError("torpor's SQLite store always uses journal_mode=WAL")
        url = f"sqlite://{workdir / 'torpor.db'}"
    else:
        if not args.url:
            raise ValueError("--url is required for --backend postgres")
        url = args.url
    base = Settings.from_env()
    settings = Settings(base.home, url, base.blob_url, sqlite_synchronous=args.synchronous.upper())
    store = open_store(settings=settings)
    torpor.configure(store=store)
    try:
        result.durability = _durability(store, args.backend)
        _peer.progress(f"torpor {result.version['torpor']} on {args.backend}: {result.durability}")
        _peer.measure(result, args, _call, "torpor")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = _peer.make_parser(__doc__.splitlines()[0])
    return _peer.main(parser, argv, "torpor", "replay", _measure)


if __name__ == "__main__":
    sys.exit(main())
