"""The HTTP API: a real uvicorn server on loopback, over SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import AUTH, TOKEN, Live, torpor_env
from torpor import (
    Client,
    PayloadTooLargeError,
    RunNotFoundError,
    RunStateError,
    RunStatus,
    Settings,
    TorporError,
    __version__,
)
from torpor._logging import JsonFormatter
from torpor.server import load_or_create_token
from torpor.store import Store, open_store
from torpor.testing import WorkerProcess, wait_until

WORKFLOWS = Path(__file__).parent / "workflows"
APPROVAL = f"{WORKFLOWS / 'waits.py'}:approval"
JSON = {"Content-Type": "application/json"}


def _finish(store: Store, run_id: str, output: object = "done") -> None:
    """End a run as a worker would."""
    run = store.claim_run("test-worker", 30, run_id=run_id)
    assert run is not None
    store.update_run(run_id, run.epoch, status=RunStatus.COMPLETED, output=output, release=True)


# -- authentication ---


def test_authentication_is_required(live: Live) -> None:
    with httpx2.Client(base_url=live.url) as raw:
        for method, path in [("GET", "/v1/runs"), ("GET", "/metrics"), ("POST", "/v1/runs")]:
            missing = raw.request(method, path)
            assert missing.status_code == 401, path
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["type"] == "Unauthorized"
            assert "Authorization: Bearer" in missing.json()["error"]["message"]
            wrong = raw.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403, path
            assert wrong.json()["error"] == {
                "type": "Forbidden", "message": "the bearer token is wrong", "details": {},
            }  # fmt: skip
            basic = raw.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 401
        assert raw.get("/v1/runs", headers=AUTH).status_code == 200
        assert raw.get("/v1/runs", headers={"Authorization": f"bearer  {TOKEN}"}).is_success
        # Health alone needs no token; the schema needs it like every other route.
        assert raw.get("/healthz").json() == {"status": "ok", "version": __version__}
        assert raw.get("/openapi.json").status_code == 401
        schema = raw.get("/openapi.json", headers=AUTH).json()
        assert "/v1/runs/{run_id}/log/stream" in schema["paths"]
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"

    with live.client(token="nope") as wrong, pytest.raises(TorporError, match="TORPOR_API_TOKEN"):
        wrong.list_runs()


def test_token_is_generated_once_private_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORPOR_API_TOKEN", raising=False)
    token, origin = load_or_create_token(tmp_path / "home")
    assert origin == "generated" and len(token) > 40
    path = tmp_path / "home" / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path / "home") == (token, "file")
    monkeypatch.setenv("TORPOR_API_TOKEN", "from-env")
    assert load_or_create_token(tmp_path / "home") == ("from-env", "env")


# -- every endpoint, through the client and raw HTTP ---


def test_client_mirrors_the_store(live: Live, store: Store) -> None:
    with live.client() as client:
        run = client.start(APPROVAL, kwargs={}, queue="q1", priority=3)
        assert run.workflow == "waits.approval" and run.status is RunStatus.QUEUED
        assert (run.queue, run.priority) == ("q1", 3)
        assert client.get_run(run.id).to_json() == store.get_run(run.id).to_json()
        assert [r.id for r in client.list_runs(statuses=["queued"])] == [run.id]
        assert client.list_runs(statuses=[RunStatus.COMPLETED]) == []

        event = client.send(run.id, "approval", {"ok": True})
        assert (event.name, event.payload) == ("approval", {"ok": True})
        assert [e.id for e in store.list_events(run.id)] == [event.id]

        cancelled = client.cancel(run.id)
        assert cancelled.status is RunStatus.CANCELLED
        with pytest.raises(RunStateError) as refused:
            client.cancel(run.id)
        assert (refused.value.run_id, refused.value.status) == (run.id, "cancelled")
        with pytest.raises(RunStateError):
            client.send(run.id, "approval", 1)

        entries = client.log(run.id)
        assert [e.to_json() for e in entries] == [e.to_json() for e in store.read(run.id)]
        assert client.log(run.id, after=1) == []
        assert client.log(run.id, limit=1) == entries[:1]

        assert client.resume(run.id).status is RunStatus.QUEUED
        forked = client.fork(run.id, at=1)
        assert forked.forked_from == run.id and forked.status is RunStatus.QUEUED
        assert store.get_run(forked.id).workflow == "waits.approval"

        assert client.snapshots(run.id) == []
        with pytest.raises(TorporError, match="replay road"):
            client.checkpoint(run.id)
        assert client.health()["status"] == "ok"

        with pytest.raises(RunNotFoundError) as missing:
            client.get_run("r-nosuchrun0000")
        assert missing.value.run_id == "r-nosuchrun0000"
        for call in (client.log, client.snapshots, client.cancel, client.resume, client.fork):
            with pytest.raises(RunNotFoundError):
                call("r-nosuchrun0000")


def test_raw_http_endpoints_and_field_names(live: Live, http: httpx2.Client, store: Store) -> None:
    made = http.post("/v1/runs", json={"workflow": APPROVAL, "args": []})
    assert made.status_code == 201
    run_id = made.json()["id"]
    assert made.json() == store.get_run(run_id).to_json()  # the CLI's --json field names
    assert http.get("/v1/runs", params={"limit": 1}).json() == [store.get_run(run_id).to_json()]
    sent = http.post(f"/v1/runs/{run_id}/events/approval", content=b'"yes"')
    assert sent.status_code == 201 and sent.json()["payload"] == "yes"
    empty = http.post(f"/v1/runs/{run_id}/events/ping")  # no body: a null payload
    assert empty.status_code == 201 and empty.json()["payload"] is None
    odd = http.post(f"/v1/runs/{run_id}/events/a%2Fb%20c", json=[1])  # any name
    assert odd.json()["name"] == "a/b c"
    assert http.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
    log = http.get(f"/v1/runs/{run_id}/log").json()
    assert log == [e.to_json() for e in store.read(run_id)]
    assert set(log[0]) == {"seq", "kind", "payload", "created_at"}
    assert http.post(f"/v1/runs/{run_id}/resume").json()["status"] == "queued"
    fork = http.post(f"/v1/runs/{run_id}/fork")  # no body: fork after all recorded calls
    assert fork.status_code == 201 and fork.json()["forked_from"] == run_id
    assert http.get(f"/v1/runs/{run_id}/snapshots").json() == []
    replay = http.post(f"/v1/runs/{run_id}/snapshot")  # a replay-road run has no snapshots
    assert replay.status_code in (400, 409) and "replay road" in replay.json()["error"]["message"]


def test_bad_input_gets_a_4xx_with_a_clear_message(
    live: Live, http: httpx2.Client, store: Store
) -> None:
    run_id = store.create_run("w").id
    cases = [
        # (method, path, kwargs, status, type, words in the message)
        ("GET", "/v1/runs/r-nosuchrun0000", {}, 404, "RunNotFoundError", "no run with id"),
        ("POST", "/v1/runs", {"content": b'{"workflow": ', "headers": JSON}, 400, "InvalidJSON",
         "not valid JSON"),
        ("POST", "/v1/runs", {"content": b'{"workflow": "w"}'}, 415, "UnsupportedMediaType",
         "no Content-Type"),
        ("POST", f"/v1/runs/{run_id}/events/x", {"content": b"{ok: 1}"}, 400, "InvalidJSON",
         "line 1 column 2"),
        ("POST", f"/v1/runs/{run_id}/events/x", {"content": b"\xff\xfe"}, 400, "InvalidJSON",
         "not UTF-8"),
        ("POST", "/v1/runs", {"json": {"workflow": "w", "priority": "high"}}, 422,
         "ValidationError", "priority"),
        ("POST", "/v1/runs", {"json": {"workflow": "w", "bogus": 1}}, 422, "ValidationError",
         "bogus"),
        ("POST", "/v1/runs", {"json": {"workflow": "w", "priority": 2**40}}, 422,
         "ValidationError", "priority"),
        ("POST", "/v1/runs", {"json": {"workflow": "nope.flow"}}, 422, "WorkflowNotFoundError",
         "--import"),
        ("POST", "/v1/runs", {"json": {"workflow": "/no/such/file.py:main"}}, 422,
         "WorkflowNotFoundError", "not a Python file"),
        ("POST", "/v1/runs", {"json": {"workflow": f"{WORKFLOWS / 'waits.py'}:nope"}}, 422,
         "WorkflowNotFoundError", "no function 'nope'"),
        ("POST", "/v1/runs", {"content": b'{"workflow": "w"}',
                              "headers": {"Content-Type": "text/plain"}},
         415, "UnsupportedMediaType", "'text/plain'"),
        ("POST", f"/v1/runs/{run_id}/events/x", {"content": b'"\\ud800"'}, 400, "InvalidText",
         "not valid Unicode"),
        ("POST", f"/v1/runs/{run_id}/events/a%00b", {"json": 1}, 422, "ValidationError", "name"),
        ("GET", "/v1/runs/r-1/log", {"params": {"after": -1}}, 422, "ValidationError", "after"),
        ("GET", "/v1/runs", {"params": {"status": "sleepy"}}, 422, "ValidationError", "status"),
        ("POST", f"/v1/runs/{run_id}/fork", {"json": {"at": 0}}, 422, "ValidationError", "at"),
        ("POST", f"/v1/runs/{run_id}/resume", {"json": {"snapshot": "s1"}}, 400, "TorporError",
         "is on the replay road: it has no snapshots to resume from"),
        ("POST", f"/v1/runs/{run_id}/resume", {"json": {"snapshot": 5}}, 422, "ValidationError",
         "snapshot"),
        ("DELETE", f"/v1/runs/{run_id}", {}, 405, "MethodNotAllowed", "Method Not Allowed"),
        ("GET", "/v2/runs", {}, 404, "NotFound", "openapi.json"),
    ]  # fmt: skip
    for method, path, kwargs, status, kind, words in cases:
        response = http.request(method, path, **kwargs)
        assert response.status_code == status, (path, kwargs, response.text)
        error = response.json()["error"]
        assert error["type"] == kind, (path, error)
        assert words in error["message"], (path, error)
    assert store.read(run_id) == []  # nothing refused was written

    _finish(store, run_id)
    ended = http.post(f"/v1/runs/{run_id}/events/x", json=1)
    assert ended.status_code == 409
    assert ended.json()["error"] == {
        "type": "RunStateError",
        "message": f"run {run_id} is completed: cannot deliver event 'x'",
        "details": {"run_id": run_id, "status": "completed", "operation": "deliver event 'x'"},
    }
    assert http.post(f"/v1/runs/{run_id}/cancel").status_code == 409


def test_oversized_bodies_get_413(store: Store, db_url: str) -> None:
    small = Live(store, max_body_bytes=1000)
    tight_store = open_store(
        db_url, settings=dataclasses.replace(Settings.from_env(), max_payload_bytes=500)
    )
    tight = Live(tight_store)
    try:
        run_id = store.create_run("w").id
        with httpx2.Client(base_url=small.url, headers=AUTH) as http:
            declared = http.post(f"/v1/runs/{run_id}/events/x", json="a" * 5000)
            assert declared.status_code == 413
            error = declared.json()["error"]
            assert error["type"] == "PayloadTooLarge"
            assert "5,002 bytes, over the limit of 1,000 bytes" in error["message"]

            def chunks():  # no Content-Length: the limit is counted as the body arrives
                for _ in range(10):
                    yield b"a" * 500

            chunked = http.post(f"/v1/runs/{run_id}/events/x", content=chunks())
            assert chunked.status_code == 413
            assert "over the limit of 1,000 bytes" in chunked.json()["error"]["message"]
            assert http.post(f"/v1/runs/{run_id}/events/x", json="a" * 900).status_code == 201
        with tight.client() as client:
            with pytest.raises(PayloadTooLargeError) as refused:
                client.send(run_id, "x", "a" * 1000)  # under the body limit, over the store's
            assert (refused.value.size, refused.value.limit) == (1002, 500)
        assert [e.name for e in store.list_events(run_id)] == ["x"]
    finally:
        small.close()
        tight.close()
        tight_store.close()


# -- following a log ---


def test_follow_streams_entries_as_they_land_and_ends_with_the_run(
    live: Live, store: Store
) -> None:
    run_id = store.create_run("w").id
    store.append(run_id, "user", {"text": "first"})
    seen: list[int] = []
    got_first = threading.Event()

    def write_later() -> None:
        got_first.wait(30)
        for n in range(2, 6):
            store.append(run_id, "note", {"n": n})
            time.sleep(0.05)
        _finish(store, run_id)

    writer = threading.Thread(target=write_later)
    writer.start()
    try:
        with live.client() as client:
            for entry in client.follow(run_id):
                seen.append(entry.seq)
                got_first.set()
    finally:
        got_first.set()
        writer.join(timeout=30)
    assert seen == list(range(1, 6))
    assert [e.seq for e in store.read(run_id)] == seen


def test_sse_wire_format_and_resuming_after_an_id(
    live: Live, http: httpx2.Client, store: Store
) -> None:
    run_id = store.create_run("w").id
    for n in range(3):
        store.append(run_id, "note", {"n": n})
    _finish(store, run_id)
    total = len(store.read(run_id))
    with http.stream("GET", f"/v1/runs/{run_id}/log/stream", params={"after": 1}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(httpx2.EventSource(response))
    assert [e.id for e in events[:-1]] == [str(n) for n in range(2, total + 1)]
    assert all(e.event == "entry" for e in events[:-1])
    assert json.loads(events[0].data) == store.read(run_id)[1].to_json()
    assert (events[-1].event, json.loads(events[-1].data)) == ("end", {"status": "completed"})
    # An EventSource reconnecting sends the last id it saw.
    with http.stream(
        "GET", f"/v1/runs/{run_id}/log/stream", headers={"Last-Event-ID": str(total - 1)}
    ) as response:
        events = list(httpx2.EventSource(response))
    assert [(e.event, e.id) for e in events[:1]] == [("entry", str(total))]
    assert [e.event for e in events[1:]] == ["end"]
    assert http.get("/v1/runs/r-nosuchrun0000/log/stream").status_code == 404


# -- a run started over HTTP, executed by a real worker ---


def test_run_started_over_http_is_executed_by_a_worker(
    live: Live, db_url: str, tmp_path: Path
) -> None:
    env = torpor_env(db_url, tmp_path / "home")
    log = tmp_path / "worker.log"
    with WorkerProcess("--lease", "5", "--park-after", "0.5", env=env, log=log) as worker:
        with live.client() as client:
            run = client.start(APPROVAL)
            wait_until(lambda: client.get_run(run.id).status is RunStatus.WAITING, "the wait")
            client.send(run.id, "approval", {"ok": True})
            kinds = [entry.kind for entry in client.follow(run.id)]
            done = client.get_run(run.id)
        assert done.status is RunStatus.COMPLETED, done.error
        assert done.output == {"answer": {"ok": True}}
        assert "event" in kinds and kinds[0] == "step"
        assert worker.stop(timeout=30) == 0, worker.log()


# -- the CLI through --url ---


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torpor", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_cli_url_gives_the_same_output_as_the_store(
    live: Live, store: Store, db_url: str, tmp_path: Path
) -> None:
    local = torpor_env(db_url, tmp_path / "home")
    # The remote CLI cannot reach the store: only the server can.
    remote = torpor_env("sqlite:///nonexistent/dir/x.db", tmp_path / "elsewhere",
                        TORPOR_URL=live.url, TORPOR_API_TOKEN=TOKEN)  # fmt: skip
    run_id = store.create_run("w", input={"x": 1}).id
    store.append(run_id, "user", {"text": "hello"})

    # Independent commands run side by side: each is a fresh Python process.
    with ThreadPoolExecutor(4) as pool:
        calls = [
            (args, pool.submit(_cli, local, *args), pool.submit(_cli, remote, *args))
            for args in (["ps", "--all", "--json"], ["ps"], ["log", run_id])
        ]
    for args, here_call, there_call in calls:
        here, there = here_call.result(), there_call.result()
        assert here.returncode == there.returncode == 0 and here.stdout
        if args == ["ps"]:  # its AGE column moves on between the two calls
            here.stdout, there.stdout = (re.sub(r" \d+[smhd]$", "", o.stdout, flags=re.M)
                                         for o in (here, there))  # fmt: skip
        assert there.stdout == here.stdout, args

    sent = _cli(remote, "send", run_id, "approval", '{"ok": true}')
    assert sent.returncode == 0 and sent.stdout.startswith(f"sent 'approval' to {run_id}")
    assert [e.payload for e in store.list_events(run_id)] == [{"ok": True}]
    assert _cli(remote, "cancel", run_id).stdout == f"{run_id} cancelled\n"

    failing = [
        (["cancel", run_id], f"run {run_id} is cancelled: cannot cancel it"),
        (["log", "r-nosuchrun0000"], "no run with id 'r-nosuchrun0000'"),
        (["--token", "nope", "ps"], "the bearer token is wrong"),
        (["--url", "http://127.0.0.1:9", "ps"], "cannot reach the torpor server"),
    ]
    with ThreadPoolExecutor(4) as pool:
        follow = pool.submit(_cli, remote, "log", run_id, "--follow", "--json")
        results = list(pool.map(lambda case: _cli(remote, *case[0]), failing))
    # The run has ended: --follow prints its entries and returns.
    assert [json.loads(line)["seq"] for line in follow.result().stdout.splitlines()] == [1, 2]
    for (args, words), failed in zip(failing, results, strict=True):
        assert failed.returncode == 1, args
        assert failed.stderr.startswith("Error: ") and words in failed.stderr, failed.stderr
        assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr


def test_cli_fork_goes_through_the_server(live: Live, store: Store, tmp_path: Path) -> None:
    # The remote CLI cannot reach the store: a fork that ignored --url would fail.
    remote = torpor_env("sqlite:///nonexistent/dir/x.db", tmp_path / "elsewhere",
                        TORPOR_URL=live.url, TORPOR_API_TOKEN=TOKEN)  # fmt: skip
    run_id = store.create_run("w").id
    store.append(run_id, "step", {"pos": 1, "name": "s", "result": 1})
    store.append(run_id, "step", {"pos": 2, "name": "s", "result": 2})
    _finish(store, run_id)

    detached = _cli(remote, "fork", run_id, "--at", "2", "--detach")
    assert detached.returncode == 0, detached.stderr
    child = store.get_run(detached.stdout.strip())
    assert child.forked_from == run_id and child.status is RunStatus.QUEUED
    assert [e.payload.get("pos") for e in store.read(child.id)] == [1, None]  # then "forked"

    # Without --detach it waits for a worker (here: the test) to end the run.
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_cli, remote, "fork", run_id, "--json")
        forked = wait_until(  # made, and its log copied ("forked" comes last)
            lambda: [r for r in store.list_runs() if r.forked_from == run_id and r.id != child.id
                     and store.read(r.id)[-1:] and store.read(r.id)[-1].kind == "forked"],
            "the fork",
        )[0]  # fmt: skip
        _finish(store, forked.id, output={"ok": True})
        waited = waiting.result()
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) == {
        "id": forked.id, "status": "completed", "output": {"ok": True}, "error": None
    }  # fmt: skip

    refused = _cli(remote, "fork", run_id, "--at", "s-1", "--detach")
    assert refused.returncode == 1 and "replay road" in refused.stderr, refused.stderr


# -- metrics ---


def _scrape(http: httpx2.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics(live: Live, http: httpx2.Client, store: Store) -> None:
    before = _scrape(http)
    assert before[("torpor_runs", (("status", "queued"),))] == 0
    a, b = store.create_run("w").id, store.create_run("w").id
    store.cancel_run(b)
    run = store.claim_run("test-worker", 30, run_id=a)
    assert run is not None
    for n in range(3):
        time.sleep(0.02)
        store.append(a, "step", {"pos": n + 1, "name": "s", "result": n}, epoch=run.epoch)
    after = _scrape(http)
    assert after[("torpor_runs", (("status", "running"),))] == 1
    assert after[("torpor_runs", (("status", "cancelled"),))] == 1
    assert after[("torpor_runs", (("status", "suspended"),))] == 0
    assert after[("torpor_log_entries_total", ())] == 4
    assert after[("torpor_store_bytes", (("part", "database"),))] > 0
    # The first step's entry has no earlier one in its run; the next two each measure >= 20 ms.
    assert after[("torpor_step_seconds_count", (("kind", "step"),))] == 2
    assert after[("torpor_step_seconds_sum", (("kind", "step"),))] >= 0.04
    assert after[("torpor_step_seconds_bucket", (("kind", "step"), ("le", "+Inf")))] == 2
    assert _scrape(http)[("torpor_step_seconds_count", (("kind", "step"),))] == 2  # not twice
    assert after[("torpor_snapshot_dump_seconds_count", ())] == 0


# -- the schema, fuzzed ---


def test_schema_fuzzed_with_schemathesis(live: Live, store: Store) -> None:
    """Generated requests, valid and invalid, to every operation: never a 5xx, and every
    response (status, content type, headers, body) as the schema says."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    # Random run ids only ever find nothing: a third pass aims at runs that exist (a live
    # one, and an ended one for the log stream, which would otherwise wait for its end).
    live_run = store.create_run("w", input={"args": [1]}).id
    store.append(live_run, "user", {"text": "hi"})
    ended_run = store.create_run("w").id
    _finish(store, ended_run)
    schema = schemathesis.openapi.from_dict(live.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 13
    statuses: dict[int, int] = {}
    for operation in operations:
        passes: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if "{run_id}" in operation.path:
            run_id = ended_run if operation.path.endswith("/stream") else live_run
            passes.append((GenerationMode.POSITIVE, {"run_id": run_id}))
        for mode, fixed in passes:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

            @settings(
                max_examples=10, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.generate],
            )  # fmt: skip
            @given(case=strategy)
            def call(case) -> None:
                response = case.call_and_validate(
                    base_url=live.url, headers=AUTH, checks=checks, timeout=10
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            try:
                call()
            except Unsatisfiable:
                # Nothing about /healthz can be made invalid: no parameters, no body.
                assert mode is GenerationMode.NEGATIVE and operation.path == "/healthz"
    assert sum(statuses.values()) > 250
    assert {200, 201, 401, 404, 409, 422} <= set(statuses), statuses


# -- torpor server, the command ---


@contextmanager
def _server_command(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`torpor server --port 0`, its stderr piped; killed and waited for if the block did not
    end it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "torpor", "server", "--port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate(timeout=30)


def _sigterm(proc: subprocess.Popen[str]) -> str:
    """End the server as a service manager would; the rest of its stderr."""
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    return rest


def test_server_command_prints_a_new_token_once_and_logs_json_lines(tmp_path: Path) -> None:
    env = torpor_env(f"sqlite://{tmp_path / 'torpor.db'}", tmp_path / "home",
                     TORPOR_LOG_FORMAT="json")  # fmt: skip
    with _server_command(env) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert url is not None, first
        token_line = proc.stderr.readline()
        assert "shown only now" in token_line
        token = token_line.rsplit(" ", 1)[1].strip()
        assert (tmp_path / "home" / "api-token").read_text().strip() == token
        with Client(url.group(0), token) as client:
            wait_until(lambda: _healthy(client), "the server")
            assert client.list_runs() == []
        out = _sigterm(proc)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("GET /v1/runs" in line["message"] for line in lines)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)

    with _server_command(env) as again:
        assert again.stderr is not None
        again.stderr.readline()
        assert again.stderr.readline().strip() == (
            f"API token: from {tmp_path / 'home' / 'api-token'}"
        )
        _sigterm(again)


def _healthy(client: Client) -> bool:
    try:
        return client.health()["status"] == "ok"
    except TorporError:
        return False


def test_json_log_lines_name_the_run() -> None:
    import logging

    formatter = JsonFormatter()
    record = logging.LogRecord(
        "torpor.worker", logging.WARNING, __file__, 1, "run %s: lease renewal failed",
        ("r-0na1fwjvhv78a",), None,
    )  # fmt: skip
    line = json.loads(formatter.format(record))
    assert line["run_id"] == "r-0na1fwjvhv78a"
    assert (line["level"], line["logger"]) == ("warning", "torpor.worker")
    assert line["message"] == "run r-0na1fwjvhv78a: lease renewal failed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    record.run_id = "r-explicit"
    assert json.loads(formatter.format(record))["run_id"] == "r-explicit"
