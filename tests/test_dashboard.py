"""The dashboard end to end: a real server on loopback, real workers, headless Chromium.

Screenshots go to $TORPOR_TEST_ARTIFACTS/<test> (default: the test's tmp_path). Without
Chromium or Playwright the browser tests skip, except under TORPOR_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

import torpor
from _criu_fixtures import criu  # noqa: F401 - the snapshot-road test needs CRIU
from conftest import AUTH, TOKEN, Live, torpor_env
from torpor import RunStatus
from torpor.server._dashboard import SESSION_SECONDS, new_session
from torpor.store import Store
from torpor.testing import (
    ScriptedModelServer,
    ScriptedRequest,
    WorkerGroup,
    reply_text,
    reply_tool_calls,
    wait_until,
)

CHROMIUM = "/usr/bin/chromium"
WORKFLOWS = Path(__file__).parent / "workflows"
SNAP_FLOWS = WORKFLOWS / "snap_flows.py"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the dashboard reads through the API, which is tested on both backends."""
    return f"sqlite://{tmp_path / 'torpor.db'}"


def _browser_or_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (scripts/setup installs Debian's chromium as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_or_reason()
    if reason is not None:
        if os.environ.get("TORPOR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TORPOR_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    base = os.environ.get("TORPOR_TEST_ARTIFACTS")
    where = Path(base) / request.node.name if base else tmp_path / "artifacts"
    where.mkdir(parents=True, exist_ok=True)
    return where


class Page:
    """A page in a fresh browser context (its own cookies), with what it requested."""

    def __init__(self, browser: Any, live: Live, artifacts: Path) -> None:
        self.live = live
        self.artifacts = artifacts
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.requests: list[str] = []
        self.responses: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", lambda r: self.responses.append((r.url, r.status)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # A refused request is logged too (expected before logging in); anything else the
        # browser reports as an error, e.g. a Content Security Policy violation, is not.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def open(self, path: str = "/dashboard/") -> None:
        self.page.goto(self.live.url + path)

    def login(self, token: str = TOKEN) -> None:
        self.page.fill("#token", token)
        self.page.click("#login button[type=submit]")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"{name}.png"), full_page=True)

    def confirm(self) -> None:
        self.page.locator("#confirm[open] #confirm-ok").click()

    def close(self) -> None:
        # Every request stayed on the server; no script raised.
        origin = urlsplit(self.live.url)
        outside = [u for u in self.requests if urlsplit(u)[:2] != origin[:2]]
        assert not outside, f"requests left the server: {outside}"
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture
def page(browser: Any, live: Live, artifacts: Path) -> Iterator[Page]:
    opened = Page(browser, live, artifacts)
    try:
        yield opened
    finally:
        try:
            opened.shot("last")
        finally:
            opened.close()


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[WorkerGroup]:
    """`torpor worker` subprocesses over the test's store; their logs kept for failures."""
    env = torpor_env(db_url, tmp_path / "home", OPENAI_API_KEY="k")
    with WorkerGroup("--lease", "5", env=env, logs=tmp_path / "home") as group:
        yield group


# -- no token, no data ---------------------------------------------------------------------


SECRET = "confidential-flow-7f3a"


def _said(store: Store, run_id: str) -> None:
    """A user message naming the secret, as an agent's log holds it."""
    said = {"type": "user", "text": f"{SECRET} in the log"}
    store.append(run_id, "user", {"pos": 1, "name": "user", "result": said})


def _assets(http: httpx2.Client) -> dict[str, httpx2.Response]:
    index = http.get("/dashboard/")
    pages = {"/dashboard/": index}
    for name in ("style.css", "favicon.svg", "js/app.js", "js/api.js", "js/dom.js",
                 "js/runs.js", "js/run.js", "js/timeline.js", "js/charts.js"):  # fmt: skip
        pages[f"/dashboard/{name}"] = http.get(f"/dashboard/{name}")
    return pages


def test_without_a_token_nothing_is_revealed(live: Live, store: Store) -> None:
    run = store.create_run(SECRET)
    _said(store, run.id)
    paths = [
        ("GET", "/v1/runs"), ("GET", f"/v1/runs/{run.id}"), ("GET", f"/v1/runs/{run.id}/log"),
        ("GET", f"/v1/runs/{run.id}/log/stream"), ("GET", f"/v1/runs/{run.id}/snapshots"),
        ("GET", "/metrics"), ("POST", f"/v1/runs/{run.id}/cancel"),
        ("POST", f"/v1/runs/{run.id}/events/x"), ("POST", f"/v1/runs/{run.id}/fork"),
    ]  # fmt: skip
    now = int(time.time())
    valid = new_session(TOKEN, now)
    bad_cookies = {
        "garbage": "not-a-session",
        "another token's": new_session("tp_another-token", now),
        "expired": new_session(TOKEN, now - SESSION_SECONDS - 10),
        "from the future": new_session(TOKEN, now + 3600),
        "tampered": valid[:-1] + ("1" if valid.endswith("0") else "0"),
        "another time": f"{now - 1}.{valid.partition('.')[2]}",
        "the token itself": TOKEN,
    }
    with httpx2.Client(base_url=live.url, timeout=30) as http:
        # The pages are static: they hold no run, whoever asks.
        for path, response in _assets(http).items():
            assert response.status_code == 200, path
            assert SECRET not in response.text and run.id not in response.text, path
            assert "default-src 'none'" in response.headers["content-security-policy"], path
            assert response.headers["x-content-type-options"] == "nosniff"
        assert http.get("/").headers["location"] == "/dashboard/"
        assert http.get("/dashboard/nope.js").status_code == 404
        assert http.get("/dashboard/../_app.py").status_code == 404
        for method, path in paths:
            response = http.request(method, path)
            assert response.status_code == 401, (path, response.text)
            assert SECRET not in response.text
        for what, value in bad_cookies.items():
            for method, path in paths[:2] + paths[-3:-1]:
                cookie = {"Cookie": f"torpor_session={value}", "X-Torpor-Dashboard": "1"}
                response = http.request(method, path, headers=cookie)
                assert response.status_code == 401, (what, path, response.text)
                assert SECRET not in response.text
        assert store.get_run(run.id).status is RunStatus.QUEUED
        assert store.list_events(run.id) == []

        # Logging in: JSON with the right token only.
        wrong = http.post("/dashboard/login", json={"token": "tp_wrong"})
        assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
        form = http.post("/dashboard/login", data={"token": TOKEN})
        assert form.status_code == 415 and "set-cookie" not in form.headers
        good = http.post("/dashboard/login", json={"token": TOKEN})
        assert good.status_code == 204
        cookie = good.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "secure" not in attributes  # plain http
        assert TOKEN not in cookie  # the cookie is a MAC, not the token
        session = http.cookies["torpor_session"]
        assert http.get("/v1/runs").json()[0]["workflow"] == SECRET

        # A cookie alone does not change state: writes need the dashboard's header.
        for path in (f"/v1/runs/{run.id}/cancel", f"/v1/runs/{run.id}/events/x"):
            refused = http.post(path, json=1)
            assert refused.status_code == 403, refused.text
            assert "X-Torpor-Dashboard: 1" in refused.json()["error"]["message"]
        assert store.get_run(run.id).status is RunStatus.QUEUED
        assert store.list_events(run.id) == []
        sent = http.post(f"/v1/runs/{run.id}/events/x", json=1, headers={"X-Torpor-Dashboard": "1"})
        assert sent.status_code == 201
        # The bearer token works as before, with or without the cookie.
        assert http.get("/v1/runs", headers=AUTH).status_code == 200
        assert http.post(f"/v1/runs/{run.id}/cancel", headers=AUTH).status_code == 200
        wrong_bearer = http.get("/v1/runs", headers={"Authorization": "Bearer nope"})
        assert wrong_bearer.status_code == 403  # a wrong bearer is not rescued by the cookie

        out = http.post("/dashboard/logout")
        assert out.status_code == 204 and "max-age=0" in out.headers["set-cookie"].lower()
        assert "torpor_session" not in http.cookies
        assert http.get("/v1/runs").status_code == 401
    # A session value outlives logging out only in a copy someone kept (documented).
    assert session


def test_fork_names_a_snapshot_only_on_the_snapshot_road(http: httpx2.Client, store: Store) -> None:
    run = store.create_run("w")
    replay = http.post(f"/v1/runs/{run.id}/fork", json={"snapshot": "s-1"})
    assert replay.status_code == 400 and "replay road" in replay.json()["error"]["message"]
    both = http.post(f"/v1/runs/{run.id}/fork", json={"snapshot": "s-1", "at": 2})
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    snap = store.create_run("w", road=torpor.Road.SNAPSHOT)
    none = http.post(f"/v1/runs/{snap.id}/fork", json={"snapshot": "s-1"})
    assert none.status_code == 400 and "no snapshot" in none.json()["error"]["message"]
    assert [r.id for r in store.list_runs()] == [snap.id, run.id]  # nothing was made


def test_browser_shows_the_login_and_never_data_without_a_session(
    page: Page, store: Store, live: Live
) -> None:
    run = store.create_run(SECRET)
    _said(store, run.id)
    page.open(f"/dashboard/#/runs/{run.id}")
    page.page.wait_for_selector("#login #token")
    page.page.wait_for_load_state("networkidle")
    page.shot("login")
    html = page.page.content()
    assert SECRET not in html and run.id not in html
    api_answers = [(u, s) for u, s in page.responses if "/v1/" in u]
    assert api_answers and all(status == 401 for _, status in api_answers), api_answers

    page.login("tp_wrong-token")
    page.page.wait_for_selector(".login-error:has-text('not the API token')")
    assert SECRET not in page.page.content()
    page.shot("login-refused")

    page.login()
    page.page.wait_for_selector(f"#timeline .entry[data-seq='1']:has-text('{SECRET} in the log')")
    assert page.page.inner_text("#run-status") == "queued"
    assert page.page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "torpor_session", True, "Strict",
    )  # fmt: skip
    page.page.reload()
    page.page.wait_for_selector("#timeline .entry[data-seq='1']")  # still logged in

    page.page.click("#logout")
    page.page.wait_for_selector("#login #token")
    assert SECRET not in page.page.content()
    assert page.context.cookies() == []
    page.open(f"/dashboard/#/runs/{run.id}")
    page.page.wait_for_selector("#login #token")
    assert SECRET not in page.page.content()


# -- the runs list and the actions of a run --------------------------------------------------


def _listed(rows: Any) -> list[str | None]:
    """The run ids of the runs list's rows, top to bottom."""
    return [rows.nth(i).get_attribute("data-run") for i in range(rows.count())]


def test_runs_list_filters_and_actions_are_confirmed_and_shown_live(
    page: Page, store: Store
) -> None:
    replay = store.create_run("flows.replayed")
    snap = store.create_run("flows.snapshotted", road=torpor.Road.SNAPSHOT)
    ended = store.create_run("flows.ended")
    store.cancel_run(ended.id)
    page.open()
    page.login()
    rows = page.page.locator("#runs tbody tr")
    wait_until(lambda: rows.count() == 3, "three runs listed")
    assert rows.nth(0).get_attribute("data-run") == ended.id  # newest first
    assert page.page.inner_text(f"tr[data-run='{snap.id}'] td:nth-child(3)") == "snapshot"

    page.page.select_option("#filter-status", "cancelled")
    wait_until(lambda: _listed(rows) == [ended.id], "the status filter")
    assert "status=cancelled" in page.page.url
    page.page.select_option("#filter-status", "")
    page.page.select_option("#filter-road", "snapshot")
    wait_until(lambda: _listed(rows) == [snap.id], "the road filter")
    page.page.select_option("#filter-road", "")
    wait_until(lambda: rows.count() == 3, "no filter")

    # Live: a run made elsewhere shows up, a status change is reflected.
    late = store.create_run("flows.late")
    page.page.wait_for_selector(f"tr[data-run='{late.id}'][data-status='queued']")
    store.cancel_run(late.id)
    page.page.wait_for_selector(f"tr[data-run='{late.id}'][data-status='cancelled']")
    page.shot("runs")

    page.page.click(f"a:text-is('{replay.id}')")
    page.page.wait_for_selector("#run-status [data-status='queued']")

    # Cancel, dismissed: nothing happens.
    page.page.click("#run-actions button:text('Cancel run')")
    page.page.locator("#confirm[open] button[value='cancel']").click()
    time.sleep(0.3)
    assert store.get_run(replay.id).status is RunStatus.QUEUED

    # An event, sent from the form after confirming.
    page.page.click("#run-actions button:text('Send event…')")
    page.page.fill("#event-name", "approval")
    page.page.fill("#event-payload", '{"ok": true, "by": "dashboard"}')
    page.confirm()
    page.page.wait_for_selector(".toast:has-text('Event approval sent')")
    (event,) = store.list_events(replay.id)
    assert (event.name, event.payload) == ("approval", {"ok": True, "by": "dashboard"})

    # Cancel, confirmed; then resume.
    page.page.click("#run-actions button:text('Cancel run')")
    page.confirm()
    page.page.wait_for_selector("#run-status [data-status='cancelled']")
    page.page.wait_for_selector("#timeline .entry[data-kind='cancelled']")
    assert store.get_run(replay.id).status is RunStatus.CANCELLED
    page.page.click("#run-actions button:text('Resume')")
    page.confirm()
    page.page.wait_for_selector("#run-status [data-status='queued']")
    page.page.wait_for_selector("#timeline .entry[data-kind='resumed']")
    assert store.get_run(replay.id).status is RunStatus.QUEUED

    # Fork (replay road): the child appears among the forks.
    page.page.click("#run-actions button:text-is('Fork')")
    page.confirm()
    child = page.page.locator("#forks li").first
    child.wait_for()
    child_id = child.get_attribute("data-run")
    assert store.get_run(child_id).forked_from == replay.id
    page.shot("run-actions")


# -- an agent run, watched live, answered, completed ----------------------------------------


def _agent_script(request: ScriptedRequest) -> torpor.agent.ModelReply:
    """Three adds (slowly, so that the log visibly grows), a question, then the answer."""
    done = len(request.tool_results)
    if done < 3:
        time.sleep(0.5)
        return reply_tool_calls(
            [("add", {"a": done, "b": 10})], ids=[f"c{done}"], text=f"step {done}"
        )
    if done == 3:
        return reply_tool_calls([("ask_human", {"question": "Which colour should it be?"})],
                                ids=["q1"])  # fmt: skip
    return reply_text(f"Painted it {request.tool_results[-1].content}.")


def test_agent_run_grows_live_is_answered_and_completes(
    page: Page,
    store: Store,
    workers: WorkerGroup,
    http: httpx2.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sys.path.insert(0, str(WORKFLOWS))
    try:
        from agent_tools import add
    finally:
        sys.path.remove(str(WORKFLOWS))
    monkeypatch.setenv("OPENAI_API_KEY", "k")  # the worker's; the scripted model ignores it
    with ScriptedModelServer(_agent_script) as model:
        agent = torpor.Agent("openai:scripted", tools=[add, "ask_human"],
                             base_url=model.openai_base_url)  # fmt: skip
        # Started over the API as `torpor.start(agent.run, task, detach=True)` would.
        made = http.post(
            "/v1/runs",
            json={"workflow": "torpor.agent", "args": [agent.spec(), "Add, then ask me."]},
        )
        assert made.status_code == 201, made.text
        run = store.get_run(made.json()["id"])

        page.open()
        page.login()
        page.page.wait_for_selector(f"tr[data-run='{run.id}'][data-status='queued']")
        page.page.click(f"a:text-is('{run.id}')")
        page.page.wait_for_selector("#run-status [data-status='queued']")
        assert page.page.locator("#timeline .entry").count() == 0

        workers.start()  # only now: the page watches the log grow from empty
        entries = page.page.locator("#timeline .entry")
        seen: list[int] = []
        question = page.page.locator("#pending .question-text")

        def asked() -> bool:
            """Whether the question is shown; notes each new number of entries meanwhile."""
            if question.is_visible():
                return True
            count = entries.count()
            if not seen or count != seen[-1]:
                seen.append(count)
                if len(seen) == 3:
                    page.shot("agent-growing")
            return False

        wait_until(asked, "the question", interval=0.03, explain=lambda: f"entries seen {seen}")
        # Entries appeared a few at a time while the page was open (the stream polls the
        # store with a backoff, so a few may land together), and none went away.
        assert seen[0] == 0 and len(seen) >= 3 and seen == sorted(seen), seen
        assert question.inner_text() == "Which colour should it be?"
        page.page.wait_for_selector("#run-status [data-status='waiting'], "
                                    "#run-status [data-status='suspended']")  # fmt: skip
        page.page.wait_for_selector("#timeline .entry[data-kind='wait']:has-text('human')")
        page.shot("agent-question")

        page.page.fill("#answer", "teal")
        page.page.click("#pending button:text('Send answer')")
        page.page.wait_for_selector("#confirm[open]:has-text('teal')")
        page.confirm()
        page.page.wait_for_selector("#run-status [data-status='completed']", timeout=60_000)
        page.page.wait_for_selector("#timeline .msg.assistant:has-text('Painted it teal.')")
        assert page.page.inner_text("#run-output") == "Painted it teal."
        assert page.page.locator("#pending").is_hidden()

    record = store.get_run(run.id)
    assert record.status is RunStatus.COMPLETED and record.output == "Painted it teal."
    (event,) = store.list_events(run.id)
    assert (event.name, event.payload) == ("human", {"text": "teal"})
    log = store.read(run.id)
    page.page.wait_for_selector(f"#timeline .entry[data-seq='{log[-1].seq}']")
    shown = page.page.locator("#timeline .entry[data-kind]")
    assert [int(shown.nth(i).get_attribute("data-seq")) for i in range(shown.count())] == [
        e.seq for e in log
    ]
    # Tool calls with their arguments and results, token usage per turn as recorded.
    assert page.page.locator(".tool-call[data-tool='add']").count() == 3
    assert "10" in page.page.inner_text(".tool-call[data-call='c2'] pre")
    assert page.page.inner_text(".tool-result[data-call='c2'] pre") == "12"
    turns = [e.payload["result"]["usage"] for e in log if e.kind == "model_call"]
    usage = [(u["input_tokens"], u["output_tokens"]) for u in turns]
    shown_usage = page.page.locator("#timeline .usage")
    assert [
        (int(shown_usage.nth(i).get_attribute("data-input")),
         int(shown_usage.nth(i).get_attribute("data-output")))
        for i in range(shown_usage.count())
    ] == usage  # fmt: skip
    page.page.wait_for_selector("#tokens tbody tr[data-turn='5']")  # charts follow shortly
    assert page.page.locator("#tokens tbody tr").count() == len(usage) == 5
    assert page.page.locator("#chart-tokens svg rect.bar").count() == 2 * len(usage)
    latencies = page.page.locator("#timeline .entry .latency")
    assert latencies.count() == sum(1 for e in log[1:] if e.kind in ("model_call", "tool_result"))
    assert page.page.locator("#latencies tr[data-kind='model_call']").count() == 1
    page.shot("agent-completed")

    page.page.click("nav a:text('Runs')")
    row = f"tr[data-run='{run.id}']"
    page.page.wait_for_selector(f"{row}[data-status='completed']")
    page.page.wait_for_selector(f"{row} td.turns:text-is('5')")


# -- a snapshot-road run: checkpoint now, fork from the snapshot -----------------------------


@pytest.mark.criu
@pytest.mark.usefixtures("criu")  # skips without CRIU, or fails under TORPOR_REQUIRE_CRIU=1
def test_checkpoint_and_fork_a_snapshot_road_run(
    page: Page, store: Store, workers: WorkerGroup, http: httpx2.Client
) -> None:
    made = http.post("/v1/runs", json={"workflow": f"{SNAP_FLOWS}:long_step", "args": [6],
                                       "road": "snapshot"})  # fmt: skip
    assert made.status_code == 201, made.text
    parent = made.json()["id"]
    workers.start("--concurrency", "2")
    page.open(f"/dashboard/#/runs/{parent}")
    page.login()
    page.page.wait_for_selector("#run-status [data-status='running']", timeout=60_000)
    page.page.click("#run-actions button:text('Checkpoint now')")
    page.confirm()
    card = page.page.locator("#timeline .snapshot-card").first
    card.wait_for(timeout=60_000)
    (snap,) = store.list_snapshots(parent)
    assert card.get_attribute("data-snapshot") == snap.id
    assert card.locator(".raw-bytes").inner_text() != "0 B"
    assert snap.raw_bytes > 0 and snap.stored_bytes > 0
    page.page.wait_for_selector(f"#timeline .entry[data-kind='snapshot']:has-text('{snap.id}')")
    page.page.wait_for_selector("#chart-snapshots svg circle")
    assert page.page.locator("#chart-snapshots svg circle").count() == 2  # size, new bytes
    page.shot("snapshot-taken")

    card.locator("button:text('Fork from here')").click()
    page.page.wait_for_selector(f"#confirm[open]:has-text('{snap.id}')")
    page.confirm()
    fork = page.page.locator("#forks li").first
    fork.wait_for()
    child = fork.get_attribute("data-run")
    record = store.get_run(child)
    assert record.forked_from == parent and record.road is torpor.Road.SNAPSHOT
    page.shot("forked")

    fork.locator("a").click()
    page.page.wait_for_selector(f"#timeline .entry[data-kind='forked']:has-text('{snap.id}')")
    page.page.wait_for_selector("#run-status [data-status='completed']", timeout=90_000)
    page.page.wait_for_selector("#timeline .entry[data-kind='restored']")
    page.page.wait_for_selector("#timeline .entry[data-kind='completed']")
    restored = [e for e in store.read(child) if e.kind == "restored"]
    assert restored and restored[0].payload["restore_ms"] > 0
    page.page.wait_for_selector("#chart-recovery svg circle[data-kind='restored']")
    child_card = page.page.locator("#timeline .snapshot-card").first
    wait_until(lambda: child_card.locator(".restore-times").inner_text() != "none yet",
               "the restore time on the child's snapshot")  # fmt: skip
    page.shot("fork-completed")
    done = store.get_run(child)
    assert done.status is RunStatus.COMPLETED and done.output == 2, done.error
    parent_done = wait_until(lambda: (r := store.get_run(parent)).status.terminal and r,
                             "the parent")  # fmt: skip
    assert parent_done.status is RunStatus.COMPLETED and parent_done.output == 2


def test_dashboard_files_are_package_data() -> None:
    """What `/dashboard/` serves ships in the package, and pyproject.toml says so."""
    import tomllib
    from importlib import resources

    folder = resources.files("torpor.server") / "dashboard"
    names = {p.name for p in folder.iterdir()} | {p.name for p in (folder / "js").iterdir()}
    assert {"index.html", "style.css", "app.js", "run.js", "charts.js"} <= names
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["torpor"]
    assert {"server/dashboard/*", "server/dashboard/js/*"} <= set(data)
