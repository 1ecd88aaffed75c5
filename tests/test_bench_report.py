"""bench/report.py: the report is assembled from recorded JSON and the scripts' sections.

A full `report.py --quick` takes many minutes (CRIU, PostgreSQL, three peers), so these tests
run its assembly and its orchestration on recorded measurements and on stand-in scripts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _series(
    peer: str,
    variant: str,
    label: str,
    backend: str,
    step: float | None,
    errors: list[str] | None = None,
) -> dict[str, Any]:
    rows = [{"per_step_us": [step]}] if step is not None else []
    return {
        "peer": peer,
        "variant": variant,
        "label": label,
        "backend": backend,
        "per_step_us": step,
        "workflows_per_second": 100.0 if step else None,
        "rows": rows,
        "errors": errors or [],
    }


def _trial(road: str, turns: int, work_s: float, cold: bool = False) -> dict[str, Any]:
    return {"road": road, "turns": turns, "work_s": work_s, "cold": cold}


RESULTS: dict[str, dict[str, Any]] = {
    "replay_steps": {
        "finished": 1_790_000_000,
        "series": [
            _series("torpor", "replay", "torpor (replay road)", "sqlite", 356.0),
            _series("dbos", "step", "DBOS Transact (`@DBOS.step`)", "sqlite", 2405.0),
            _series("temporal", "local_activity", "Temporal (local activities)", "sqlite", 4839.0),
            _series("torpor", "replay", "torpor (replay road)", "postgres", 578.0),
            _series(
                "dbos",
                "step",
                "DBOS Transact (`@DBOS.step`)",
                "postgres",
                None,
                ["OperationalError: connection refused"],
            ),
        ],
    },
    "log_append": {
        "rows": [
            {
                "store": "SQLite, WAL, synchronous=FULL",
                "writers": 1,
                "torpor_per_s": 3289.0,
                "bare_per_s": 3999.0,
                "ratio": 0.82,
            }
        ]
    },
    "recovery_steps": {
        "rows": [
            {
                "backend": "sqlite",
                "steps": 10,
                "system": "torpor",
                "trials": 1,
                "ok": 1,
                "launch_to_step_s": [0.006],
                "errors": [],
            },
            {
                "backend": "sqlite",
                "steps": 1000,
                "system": "torpor",
                "trials": 3,
                "ok": 3,
                "launch_to_step_s": [0.040, 0.050, 0.045],
                "errors": [],
            },
            {
                "backend": "sqlite",
                "steps": 1000,
                "system": "dbos",
                "trials": 3,
                "ok": 3,
                "launch_to_step_s": [1.3, 1.2, 1.25],
                "errors": [],
            },
            {
                "backend": "sqlite",
                "steps": 1000,
                "system": "temporal",
                "trials": 3,
                "ok": 0,
                "launch_to_step_s": [],
                "errors": ["RuntimeError: temporal server exited with 1"],
            },
        ]
    },
    "agent_storage": {
        "summary": [
            {
                "system": "torpor-agent",
                "turns": 1000,
                "db_bytes": 8_000_000,
                "text_bytes": 4_850_000,
                "turn_bytes": 5_500,
                "write_s": [0.004],
            },
            {
                "system": "langgraph-messages",
                "turns": 1000,
                "db_bytes": 14_000_000_000,
                "text_bytes": 4_850_000,
                "turn_bytes": 28_000_000,
                "write_s": [0.7],
            },
        ],
        "errors": {"langgraph-delta": ["exit 1, no result: ImportError: DeltaChannel"]},
    },
    "sandbox_cr": {
        "workloads": [
            {
                "workload": "small agent + child",
                "rss_mb": 20.0,
                "torpor_checkpoint_s": [0.074],
                "bare_dump_s": [0.070],
                "torpor_restore_s": [0.066],
                "bare_restore_s": [0.073],
            },
            {
                "workload": "200 MB random",
                "rss_mb": 216.0,
                "torpor_checkpoint_s": [0.181],
                "bare_dump_s": [0.194],
                "torpor_restore_s": [0.174],
                "bare_restore_s": [0.178],
            },
        ]
    },
    "snapshot_store": {
        "rounds": {
            "small": [
                {
                    "rss_mb": 17.0,
                    "raw_mb": 6.9,
                    "first_mb": 1.74,
                    "next_kb": 157.0,
                    "first_save_ms": 1687.0,
                    "next_save_ms": 125.0,
                    "store_to_running_ms": 260.0,
                }
            ],
            "200": [
                {
                    "rss_mb": 218.0,
                    "raw_mb": 217.0,
                    "first_mb": 127.2,
                    "next_kb": 4073.0,
                    "first_save_ms": 7446.0,
                    "next_save_ms": 482.0,
                    "store_to_running_ms": 2066.0,
                }
            ],
        }
    },
    "recovery": {
        "trials": [
            _trial("replay", 10, 0.062),
            _trial("replay", 10, 0.070),
            _trial("snapshot", 10, 4.0),
            _trial("replay", 1000, 0.315),
            _trial("snapshot", 1000, 1.436),
            _trial("replay", 10, 2.1, cold=True),
        ],
        "mem": {
            "suspended": {
                "suspended": 100,
                "worker_rss": 198_800_000,
                "idle_rss": 49_700_000,
                "stored_bytes": 680_000_000,
            },
            "threads": {"waiting": 1000, "rss": 290_000_000, "idle_rss": 50_000_000},
            "processes": {"waiting": 100, "rss": 3_751_500_000},
        },
    },
}

DOC = """# Benchmarks

Old header text, replaced.

<!-- someone_elses:start -->
## A section no script of the report owns
kept
<!-- someone_elses:end -->

<!-- sandbox_cr:start -->
## Sandbox checkpoint and restore (`bench/sandbox_cr.py`)

| old | table |
<!-- sandbox_cr:end -->

<!-- log_append:start -->
## Context log appends (`bench/log_append.py`)

appends table
<!-- log_append:end -->
"""

RECORD: dict[str, Any] = {
    "machine": {
        "cores": 2,
        "cpu": "Test CPU",
        "memory_gib": 24,
        "kernel": "6.1.0-test",
        "load_at_start": 1.5,
    },
    "versions": {"torpor": "0.1.0", "dbos": "3.4.0", "CRIU": "4.2.1 (/usr/sbin/criu)"},
    "runs": {
        "log_append": {"status": "ok", "seconds": 60.0},
        "sandbox_cr": {
            "status": "failed",
            "seconds": 3.0,
            "error": "exit 1: criu: command not found",
        },
        "replay_steps": {"status": "failed", "seconds": 2.0, "error": "exit 2: boom"},
    },
    "setup_error": None,
    "quick": False,
}


def test_summary_numbers_come_from_the_results(report: ModuleType, tmp_path: Path) -> None:
    text = report.assemble(DOC, RESULTS, RECORD, tmp_path)
    assert "torpor 356 µs and DBOS 2,405 µs (torpor ÷ DBOS = 0.15)" in text
    assert "Temporal's local activities 4,839 µs (0.07)" in text
    # torpor alone on PostgreSQL: no ratio is made up for the peer that failed there.
    assert "on PostgreSQL a recorded step" not in text
    assert "torpor 3,289/s, a bare INSERT 3,999/s (0.82×)" in text
    assert "on SQLite, torpor 45 ms, DBOS 1,250 ms" in text  # medians of the three trials
    assert "10 turns: replay 66 ms, snapshot 4,000 ms" in text  # the cold trial left out
    assert "LangGraph's SQLite checkpointer 14.0 GB (1,750×)" in text
    assert "200 MB random (216 MB resident): checkpoint 181 ms vs 194 ms" in text
    assert "the next (incremental) 4,073 kB, restore to running 2,066 ms" in text
    assert "snapshot road, suspended 1.5 MB + 6.8 MB stored on disk" in text
    assert "a live process per run 37.5 MB" in text
    assert "suspended on the snapshot road it leaves no process, 1.5 MB of worker memory" in text
    assert "(+ 6.8 MB stored on disk), 25× less" in text
    assert "waits in a worker thread for 240.0 kB, less still" in text
    assert "a turn near 1,000 added 5.5 kB to it, against 28.0 MB of LangGraph" in text
    assert "The replay road recovered this cheap agent faster at every length measured" in text
    assert "the replay road's recovery grew 4.8×, the snapshot road's 0.4×" in text


def test_header_states_machine_versions_and_the_command(report: ModuleType, tmp_path: Path) -> None:
    text = report.assemble(DOC, RESULTS, RECORD, tmp_path)
    assert text.startswith("# Benchmarks\n")
    assert "Old header text" not in text
    assert "```\n.venv/bin/python bench/report.py\n```" in text
    assert "2 cores (Test CPU), 24 GiB memory, Linux 6.1.0-test" in text
    assert "| dbos | 3.4.0 |" in text and "| CRIU | 4.2.1 (/usr/sbin/criu) |" in text
    assert "| `bench/sandbox_cr.py` | failed in 3 s |" in text
    assert "A `--quick` smoke run" not in text
    quick = report.assemble(DOC, RESULTS, {**RECORD, "quick": True}, tmp_path)
    assert "A `--quick` smoke run" in quick


def test_failed_peers_and_scripts_are_listed_with_their_errors(
    report: ModuleType, tmp_path: Path
) -> None:
    record = {**RECORD, "setup_error": "bench/peers/setup.sh exited 1: no network"}
    text = report.assemble(DOC, RESULTS, record, tmp_path)
    failures = text.split("## Peers and scripts that did not run", 1)[1].split("<!--", 1)[0]
    assert "peer set-up: bench/peers/setup.sh exited 1: no network" in failures
    assert (
        "DBOS Transact (`@DBOS.step`) on postgres (`bench/replay_steps.py`): "
        "OperationalError: connection refused" in failures
    )
    assert (
        "temporal on sqlite, 1000 steps (`bench/recovery_steps.py`, 0/3 trials ran): "
        "RuntimeError: temporal server exited with 1" in failures
    )
    assert "langgraph-delta (`bench/agent_storage.py`): exit 1, no result: ImportError" in failures
    assert "`bench/sandbox_cr.py` failed: exit 1: criu: command not found" in failures
    assert "log_append" not in failures  # it ran
    clean = report.assemble(DOC, {}, {**RECORD, "runs": {}}, tmp_path)
    assert "None: every peer and every script ran." in clean
    assert "No results yet." in clean


def test_sections_in_script_order_stale_ones_marked(report: ModuleType, tmp_path: Path) -> None:
    text = report.assemble(DOC, RESULTS, RECORD, tmp_path)
    sections = report.parse_sections(text)
    # The report's order, whatever the document's; replay_steps failed and had no section.
    assert list(sections) == ["log_append", "replay_steps", "sandbox_cr", "someone_elses"]
    assert sections["log_append"].endswith("appends table")
    assert (
        "> **Not refreshed in this run**: `bench/sandbox_cr.py` failed (exit 1: criu: "
        "command not found)" in sections["sandbox_cr"]
    )
    assert sections["sandbox_cr"].startswith("## Sandbox checkpoint and restore")
    assert "| old | table |" in sections["sandbox_cr"]
    assert sections["replay_steps"].endswith(
        "No results: `bench/replay_steps.py` failed (exit 2: boom)."
    )
    assert sections["someone_elses"].endswith("kept")
    # Assembling the assembled report again changes nothing (the note is not doubled).
    assert report.assemble(text, RESULTS, RECORD, tmp_path) == text


def test_figures_are_drawn_and_linked(report: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    text = report.assemble(DOC, RESULTS, RECORD, tmp_path)
    for name in ("overhead.png", "recovery_all.png", "snapshots.png", "density.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name
        assert f"]({name})" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "![" not in report.assemble(DOC, {}, RECORD, empty)
    assert not list(empty.iterdir())


def test_the_published_results_assemble(report: ModuleType, tmp_path: Path) -> None:
    """The JSON under docs/bench-results/ (what docs/benchmarks.md was made from)."""
    docs = BENCH.parent / "docs"
    results = report.load_results(docs / "bench-results")
    record = json.loads((docs / "bench-results" / "report.json").read_text())
    doc = (docs / "benchmarks.md").read_text()
    text = report.assemble(doc, results, record, tmp_path)
    for script in report.SCRIPTS:
        if not script.optional:
            assert script.name in results, f"no recorded {script.name}.json"
    assert text.count("**") >= 10
    assert report.parse_sections(text).keys() >= {s.name for s in report.SCRIPTS if not s.optional}


def test_main_runs_the_scripts_and_records_failures(
    report: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    out = tmp_path / "docs" / "benchmarks.md"
    (bench / "good.py").write_text(
        "import json, os, pathlib, sys\n"
        "docs = pathlib.Path(os.environ['TORPOR_BENCH_DOCS'])\n"
        "(docs.parent / 'bench-results').mkdir(parents=True, exist_ok=True)\n"
        "(docs.parent / 'bench-results' / 'good.json').write_text(json.dumps({'args': sys.argv}))\n"
        "docs.write_text('<!-- good:start -->\\n## Good\\nmeasured\\n<!-- good:end -->\\n')\n"
        "print('progress line', file=sys.stderr)\n"
    )
    (bench / "bad.py").write_text(
        "import sys\nprint('it broke here', file=sys.stderr)\nsys.exit(3)\n"
    )
    monkeypatch.setattr(report, "BENCH", bench)
    monkeypatch.setattr(report, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(
        report,
        "SCRIPTS",
        [
            report.Script("good", "Good", ["--fast"]),
            report.Script("bad", "Bad"),
            report.Script("absent", "Absent", optional=True),
        ],
    )
    monkeypatch.setattr(report, "setup_peers", lambda: (None, "no peers in tests"))
    monkeypatch.setattr(report, "collect_versions", lambda _: {"torpor": "9.9"})
    monkeypatch.setattr(sys, "argv", ["report.py", "--quick", "--out", str(out)])
    report.main()
    text = out.read_text()
    record = json.loads((out.parent / "bench-results" / "report.json").read_text())
    assert record["runs"]["good"]["status"] == "ok"
    assert record["runs"]["bad"] == {
        **record["runs"]["bad"],
        "status": "failed",
        "error": "exit 3: it broke here",
    }
    assert "absent" not in record["runs"]
    assert json.loads((out.parent / "bench-results" / "good.json").read_text())["args"][1:] == [
        "--fast"
    ]
    assert "`bench/bad.py` failed: exit 3: it broke here" in text
    assert "peer set-up: no peers in tests" in text
    assert "| torpor | 9.9 |" in text
    assert report.parse_sections(text) == {
        "good": "## Good\nmeasured",
        "bad": "## Bad (`bench/bad.py`)\n\nNo results: "
        "`bench/bad.py` failed (exit 3: it broke here).",
    }
