"""The command line in real subprocesses: output contracts and bad input."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import Cli, torpor_env
from torpor import RunStatus
from torpor.store import open_store


def _one_line_error(result, *needles: str) -> None:
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version_and_help(cli: Cli) -> None:
    assert cli("--version").out.startswith("torpor, version ")
    out = cli("--help").out
    for command in ("run", "worker", "ps", "log", "send", "snapshot", "snapshots", "resume",
                    "fork", "cancel", "server", "doctor", "demo"):  # fmt: skip
        assert f"  {command} " in out or f"  {command}\n" in out, command


def test_ps_log_and_json_contracts(cli: Cli, db_url: str) -> None:
    open_store(db_url).close()  # ps reads: it refuses a store that does not exist yet
    assert cli("ps", "--json").out.strip() == "[]"
    with open_store(db_url) as store:
        run = store.create_run("app:wf", input=["acme"])
        store.append(run.id, "user", {"text": "héllo"})
        store.append(run.id, "assistant", {"text": "hi"})
    runs = json.loads(cli("ps", "--json").out)
    assert [r["id"] for r in runs] == [run.id]
    assert {"id", "workflow", "road", "status", "attempt", "created_at", "updated_at"} <= set(
        runs[0]
    )
    assert (runs[0]["workflow"], runs[0]["status"], runs[0]["road"]) == (
        "app:wf",
        "queued",
        "replay",
    )
    table = cli("ps").out
    assert run.id in table and "queued" in table
    entries = json.loads(cli("log", run.id, "--json").out)
    assert [(e["seq"], e["kind"], e["payload"]) for e in entries] == [
        (1, "user", {"text": "héllo"}),
        (2, "assistant", {"text": "hi"}),
    ]
    assert set(entries[0]) == {"seq", "kind", "payload", "created_at"}
    text = cli("log", run.id).out
    assert "héllo" in text and "assistant" in text
    assert json.loads(cli("log", run.id, "--after", "1", "--json").out)[0]["seq"] == 2


def test_ps_hides_ended_runs_unless_all(cli: Cli, db_url: str) -> None:
    with open_store(db_url) as store:
        ended = store.create_run("app:ended")
        store.cancel_run(ended.id)
        live = store.create_run("app:live")
    assert [r["id"] for r in json.loads(cli("ps", "--json").out)] == [live.id]
    assert {r["id"] for r in json.loads(cli("ps", "--all", "--json").out)} == {ended.id, live.id}
    assert [r["id"] for r in json.loads(cli("ps", "--status", "cancelled", "--json").out)] == [
        ended.id
    ]


def test_log_follow_prints_entries_as_they_land_and_stops_at_the_end(cli: Cli, db_url: str) -> None:
    with open_store(db_url) as store:
        run = store.create_run("app:wf")
        store.append(run.id, "first", 1)

        def finish() -> None:
            time.sleep(0.5)
            store.append(run.id, "second", 2)
            claimed = store.claim_run("w", 30)
            assert claimed is not None
            store.append(run.id, "third", 3)
            store.update_run(run.id, claimed.epoch, status=RunStatus.COMPLETED)

        t = threading.Thread(target=finish)
        t.start()
        result = cli("log", run.id, "--follow", "--json", timeout=30)
        t.join()
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [e["payload"] for e in lines] == [1, 2, 3]


def test_send_and_cancel(cli: Cli, db_url: str) -> None:
    with open_store(db_url) as store:
        run = store.create_run("app:wf")
    result = cli("send", run.id, "approval", '{"ok": true}')
    assert result.code == 0 and "sent 'approval'" in result.out
    assert cli("send", run.id, "note", "-", input='"from stdin"').code == 0
    assert cli("send", run.id, "ping").code == 0
    with open_store(db_url) as store:
        events = [(e.name, e.payload) for e in store.list_events(run.id)]
    assert events == [("approval", {"ok": True}), ("note", "from stdin"), ("ping", None)]
    assert "cancelled" in cli("cancel", run.id).out
    _one_line_error(cli("cancel", run.id), "is cancelled: cannot cancel")
    _one_line_error(cli("send", run.id, "late", "1"), "cannot deliver event 'late'")


def test_bad_input_is_one_line_and_writes_nothing(cli: Cli, db_url: str, tmp_path: Path) -> None:
    with open_store(db_url) as store:
        run = store.create_run("app:wf")
    _one_line_error(cli("send", run.id, "approval", "{ok: true}"), "is not valid JSON")
    _one_line_error(
        cli("send", "r-doesnotexist", "approval", "1"), "no run with id 'r-doesnotexist'"
    )
    _one_line_error(cli("log", "r-doesnotexist"), "no run with id")
    _one_line_error(cli("cancel", "r-doesnotexist"), "no run with id")
    small = Cli(torpor_env(db_url, tmp_path / "home", TORPOR_MAX_PAYLOAD_BYTES="100"))
    _one_line_error(
        small("send", run.id, "big", "-", input=json.dumps("x" * 500)),
        run.id,
        "event 'big'",
        "502 bytes",
        "limit of 100",
    )
    with open_store(db_url) as store:
        assert store.list_events(run.id) == []
        assert store.read(run.id) == []
        assert store.get_run(run.id).status is RunStatus.QUEUED


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://torpor@127.0.0.1:1/torpor", "cannot open the torpor store"),
        # Commands that read or act on existing runs do not create a store that is missing.
        ("sqlite:///proc/no/such/dir/torpor.db", "no torpor store at sqlite:///proc/no/such"),
        ("mysql://localhost/x", "unsupported database URL"),
    ],
)
def test_unreachable_database_is_a_clear_error(tmp_path: Path, url: str, needle: str) -> None:
    cli = Cli(torpor_env(url, tmp_path / "home"))
    for args in (["ps"], ["send", "r-x", "go", "1"], ["log", "r-x"]):
        _one_line_error(cli(*args, timeout=60), needle)


def test_doctor_reports_the_store(cli: Cli, db_url: str) -> None:
    # A store that does not exist yet is reported, not created.
    result = cli("doctor")
    assert "--    store" in result.out and "not created yet" in result.out, result.out
    assert "--    snapshot key" in result.out and "generated (mode 0600)" in result.out
    with pytest.raises(Exception, match="no torpor store"):
        open_store(db_url, create=False)
    open_store(db_url).close()
    result = cli("doctor")
    assert result.code == 0, result.out + result.err
    assert "ok    store" in result.out and "schema v2 of v2" in result.out


def test_doctor_fails_on_unreachable_store(tmp_path: Path) -> None:
    cli = Cli(torpor_env("postgresql://torpor@127.0.0.1:1/torpor", tmp_path / "home"))
    result = cli("doctor")
    assert result.code == 1 and "FAIL  store" in result.out and "fix:" in result.out


def test_snapshot_commands_on_replay_runs_and_bad_input(cli: Cli, db_url: str) -> None:
    with open_store(db_url) as store:
        run = store.create_run("app:wf")
    assert json.loads(cli("snapshots", run.id, "--json").out) == []
    assert "has no snapshots" in cli("snapshots", run.id).out
    _one_line_error(cli("snapshot", run.id), "replay road", "no snapshots")
    _one_line_error(cli("snapshots", "r-nope"), "no run with id 'r-nope'")
    _one_line_error(cli("fork", run.id, "--at", "s-1"), "call position")


def test_demo_crashes_and_resumes_an_agent_on_both_roads(tmp_path: Path) -> None:
    env = torpor_env("unused", tmp_path / "home")
    del env["TORPOR_DATABASE_URL"]  # the embedded default: SQLite under TORPOR_HOME
    result = Cli(env)("demo", timeout=180)
    assert result.code == 0, result.out + result.err
    out = result.out
    assert out.count("SIGKILLed the worker") == 2
    assert "replayed its journal" in out and "restored its newest snapshot" in out
    assert out.count("final answer: Done: app.py and its test pass") == 2
    rows = {line.split("  ")[0]: line.split("  ")[1:] for line in out.splitlines()}
    cells = {key: [c.strip() for c in value if c.strip()] for key, value in rows.items()}
    # Six turns recorded and six model calls paid for on each road: nothing asked twice.
    assert cells["turns (model calls recorded)"] == ["6", "6"]
    assert cells["model calls paid for"] == ["6", "6"]
    assert cells["suspended while waiting"] == ["—", "1x"]
    assert cells["snapshots stored"][1].split(":")[0].isdigit()
    assert (tmp_path / "home" / "torpor.db").exists()


WORKFLOWS = Path(__file__).parent / "workflows"


def test_run_executes_a_workflow_and_prints_its_result(cli: Cli, tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    target = f"{WORKFLOWS / 'five_steps.py'}:five_steps"
    result = cli("run", target, json.dumps([str(lines)]))
    assert result.code == 0, result.err
    assert json.loads(result.out) == [f"line {n}" for n in range(1, 6)]
    as_json = json.loads(cli("run", target, json.dumps({"path": str(lines)}), "--json").out)
    assert as_json["status"] == "completed" and as_json["output"][0] == "line 1"
    assert len(lines.read_text().splitlines()) == 10


def test_run_reports_bad_targets_and_failures(cli: Cli, tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text(
        "import torpor\n\n@torpor.workflow()\ndef boom() -> None:\n    raise KeyError('gone')\n"
    )
    _one_line_error(cli("run", f"{flow}:boom"), "failed: builtins.KeyError")
    _one_line_error(cli("run", f"{flow}:nothing"), "has no function 'nothing'", "boom")
    _one_line_error(cli("run", f"{tmp_path}/missing.py:main"), "no such file")
    _one_line_error(cli("run", f"{flow}:boom", '"x"'), "must be a JSON list")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    _one_line_error(cli("run", f"{broken}:main"), "importing", "ModuleNotFoundError")
    failed = json.loads(cli("ps", "--all", "--json").out)
    assert [r["status"] for r in failed] == ["failed"]  # only the run that started
