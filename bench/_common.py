"""Shared pieces of the benchmarks: machine description, medians, and docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Where the report goes; bench/report.py --quick points this elsewhere (TORPOR_BENCH_DOCS) so
# a smoke run does not overwrite the committed figures. Plots go beside it, and every
# script's measurements as JSON under bench-results/, from which the summary is generated.
DOCS = Path(
    os.environ.get("TORPOR_BENCH_DOCS")
    or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
)
RESULTS = DOCS.parent / "bench-results"

_HEADER = """# Benchmarks

Every table here is written by a script under `bench/`; rerun it to refresh its section.
The machines are shared and noisy: read medians and the ratios against the peer measured in
the same run, not absolute numbers.
"""


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, Linux {platform.release()}, "
        f"Python {sys.version.split()[0]}"
    )


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """Median, minimum and maximum."""
    return statistics.median(values), min(values), max(values)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_section(name: str, markdown: str) -> None:
    """Replace (or add) the section between this benchmark's markers in docs/benchmarks.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else _HEADER
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def format_ms(seconds: list[float], digits: int = 0) -> str:
    """Durations in seconds, in ms: their median with the range, just the value if there is
    one, a dash if none. NaN (not measured) is left out."""
    values = [v * 1e3 for v in seconds if v == v]
    if not values:
        return "—"
    med, lo, hi = median_spread(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def save_results(name: str, data: dict[str, Any]) -> Path:
    """Write one benchmark's measurements to bench-results/NAME.json, with the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"bench": name, "machine": machine(), "finished": time.time(), **data}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    # Imported here: workers and sandboxes import the scripts, and with them this module.
    from torpor.testing import tree_rss_mb

    return tree_rss_mb(pid)
