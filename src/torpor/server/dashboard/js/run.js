// A run's page: its facts and actions, an open question to answer, charts, and the context
// log as a timeline that grows as entries land (server-sent events), with the run's
// snapshots placed at their log positions.

import { api, followLog } from "./api.js";
import { barChart, eventChart, lineChart } from "./charts.js";
import { ago, bytes, clear, confirmAction, duration, h, json, ms, parseTime, statusBadge, toast } from "./dom.js";
import { RECOVERY_KINDS, STEP_KINDS, entryRow, snapshotRow } from "./timeline.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const RUN_POLL_MS = 1500;
const RELATIVES_POLL_MS = 3000;
const SNAPSHOT_POLL_MS = 5000;
// Entries after which the run's snapshots may have changed.
const SNAPSHOT_KINDS = new Set(["snapshot", "suspended", "released", "restored", "forked"]);

const LANES = [
  { name: "recovered", cls: "c-recovery" },
  { name: "restored", cls: "c-recovery" },
  { name: "sandbox_died", cls: "c-problem" },
  { name: "released", cls: "c-recovery" },
  { name: "suspended", cls: "c-snapshot" },
  { name: "snapshot", cls: "c-snapshot" },
  { name: "resumed", cls: "c-recovery" },
  { name: "forked", cls: "c-recovery" },
  { name: "step_retry", cls: "c-problem" },
  { name: "divergence", cls: "c-problem" },
  { name: "executor_failed", cls: "c-problem" },
];

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

export class RunView {
  constructor(root, id) {
    this.root = root;
    this.id = id;
    this.run = null;
    this.entries = [];
    this.lastSeq = 0;
    this.snapshots = [];
    this.relatives = [];
    this.timers = [];
    this.stopFollowing = null;
    this.following = false;
    this.stopped = false;
    this.openCalls = new Map(); // ask_human tool call id -> {question, seq}
    this.openWaits = new Map(); // wait position -> {name, seq}
    this.sentAnswers = new Set(); // call ids answered from this page
    this.chartsDue = false;
  }

  start() {
    this.facts = h("dl", { class: "facts-grid" });
    this.actions = h("div", { class: "actions", id: "run-actions" });
    this.pending = h("section", { class: "pending", id: "pending", hidden: true });
    this.relativesBox = h("div", { class: "relatives", id: "relatives" });
    this.summary = h("div", { class: "summary" });
    this.charts = h("div", { class: "charts" });
    this.timeline = h("ol", { class: "timeline", id: "timeline" });
    this.waitingNote = h("p", { class: "muted", id: "timeline-empty" }, "No log entries yet.");
    this.title = h("h1", { class: "mono" }, this.id);
    this.badge = h("span", { id: "run-status" });
    this.root.append(
      h(
        "section",
        { class: "run-head card" },
        h("div", { class: "title-row" }, this.title, this.badge),
        this.facts,
        this.actions,
        this.relativesBox,
      ),
      this.pending,
      h(
        "details",
        { class: "card", open: true, id: "charts" },
        h("summary", {}, "Charts and measures"),
        this.summary,
        this.charts,
      ),
      h("section", { class: "card" }, h("h2", {}, "Context log"), this.waitingNote, this.timeline),
    );
    this.poll();
    this.pollRelatives();
    this.pollSnapshots();
  }

  destroy() {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    if (this.stopFollowing) this.stopFollowing();
  }

  later(fn, delay) {
    if (!this.stopped) this.timers.push(setTimeout(fn, delay));
  }

  // -- the run record ---------------------------------------------------------------------

  async poll() {
    try {
      const run = await api.run(this.id);
      if (this.stopped) return;
      this.setRun(run);
    } catch (exc) {
      if (exc.status === 404) {
        clear(this.root).append(h("p", { class: "error" }, `No run ${this.id}.`), h("a", { href: "#/" }, "All runs"));
        this.destroy();
        return;
      }
      if (exc.status !== 401) toast(`Reading the run failed: ${exc.message}`, "error");
    }
    this.later(() => this.poll(), document.hidden ? RUN_POLL_MS * 4 : RUN_POLL_MS);
  }

  setRun(run) {
    const before = this.run;
    this.run = run;
    if (!this.following && (!before || !TERMINAL.has(run.status) || run.last_seq > this.lastSeq)) {
      this.follow();
    }
    if (before && before.status !== run.status) {
      this.redrawSnapshots(); // what a snapshot offers depends on the status
      this.loadSnapshots();
    }
    this.renderFacts();
    if (!before || before.status !== run.status || before.cancel_requested !== run.cancel_requested) {
      this.renderActions();
    }
    this.renderPending();
    document.getElementById("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
  }

  renderFacts() {
    const run = this.run;
    clear(this.badge).append(statusBadge(run.status));
    const link = (id) => h("a", { href: `#/runs/${encodeURIComponent(id)}` }, id);
    const rows = [
      ["road", run.road],
      ["workflow", run.workflow],
      ["attempt", String(run.attempt)],
      ["created", `${run.created_at} (${ago(run.created_at)})`],
      ["last activity", `${run.updated_at} (${ago(run.updated_at)})`],
      ["log", `${run.last_seq} entries`],
      ["queue", `${run.queue} · priority ${run.priority}`],
      run.lease_owner ? ["worker", run.lease_owner] : null,
      run.wake_at ? ["wakes at", run.wake_at] : null,
      run.cancel_requested && !TERMINAL.has(run.status) ? ["cancel", "requested; at the next step boundary"] : null,
      run.forked_from ? ["forked from", link(run.forked_from)] : null,
      run.parent_id ? ["parent", link(run.parent_id)] : null,
      run.status === "completed" ? ["output", h("pre", { class: "value", id: "run-output" }, json(run.output))] : null,
      run.error ? ["error", h("pre", { class: "value error", id: "run-error" }, run.error.message ?? json(run.error))] : null,
    ].filter(Boolean);
    clear(this.facts).append(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  // -- actions ----------------------------------------------------------------------------

  button(label, handler, { primary = false, danger = false, title } = {}) {
    const el = h("button", { type: "button", class: primary ? "primary" : danger ? "danger" : "", title }, label);
    el.addEventListener("click", async () => {
      el.disabled = true;
      try {
        await handler();
      } finally {
        el.disabled = false;
      }
    });
    return el;
  }

  renderActions() {
    const run = this.run;
    const ended = TERMINAL.has(run.status);
    const snapshotRoad = run.road === "snapshot";
    const buttons = [];
    if (!ended) buttons.push(this.button("Send event…", () => this.sendEventDialog("", "")));
    if (snapshotRoad && run.status === "running") {
      buttons.push(this.button("Checkpoint now", () => this.checkpoint(), { title: "Take a snapshot of the running sandbox" }));
    }
    buttons.push(
      this.button(snapshotRoad ? "Fork from newest snapshot" : "Fork", () => this.fork(null), {
        title: snapshotRoad ? "A new run restored from the newest snapshot" : "A new run reusing every recorded result",
      }),
    );
    if (run.status === "failed" || run.status === "cancelled") {
      buttons.push(
        this.button(snapshotRoad ? "Resume from newest snapshot" : "Resume", () => this.resume(), {
          primary: true,
        }),
      );
    }
    if (!ended) buttons.push(this.button("Cancel run", () => this.cancel(), { danger: true }));
    clear(this.actions).append(...buttons);
  }

  async act(what, call, done) {
    try {
      const result = await call();
      if (done) done(result);
      this.poll();
      this.loadSnapshots();
      this.pollRelatives(false);
      return result;
    } catch (exc) {
      toast(`${what} failed: ${exc.message}`, "error");
      return null;
    }
  }

  async sendEventDialog(name, payload) {
    const nameInput = h("input", { id: "event-name", value: name, placeholder: "approval", required: true });
    const payloadInput = h("textarea", { id: "event-payload", rows: 4, placeholder: '{"ok": true}' }, payload);
    const form = h(
      "div",
      { class: "form" },
      h("label", { for: "event-name" }, "Event name"),
      nameInput,
      h("label", { for: "event-payload" }, "Payload (JSON; empty: null)"),
      payloadInput,
    );
    if (!(await confirmAction(`Send an event to ${this.id}`, form, "Send event"))) return;
    const eventName = nameInput.value.trim();
    const raw = payloadInput.value.trim();
    if (!eventName) {
      toast("The event needs a name.", "error");
      return;
    }
    if (raw) {
      try {
        JSON.parse(raw);
      } catch (exc) {
        toast(`The payload is not JSON: ${exc.message}`, "error");
        return;
      }
    }
    await this.act("Sending the event", () => api.send(this.id, eventName, raw), () =>
      toast(`Event ${eventName} sent to ${this.id}.`),
    );
  }

  async checkpoint() {
    const ok = await confirmAction(
      "Checkpoint now?",
      `Dump ${this.id}'s sandbox into a new snapshot while it keeps running.`,
      "Checkpoint",
    );
    if (!ok) return;
    toast("Checkpointing…");
    await this.act("Checkpointing", () => api.checkpoint(this.id), (snap) =>
      toast(`Snapshot ${snap.id} saved: ${bytes(snap.raw_bytes)}, ${bytes(snap.stored_bytes)} new.`),
    );
  }

  async fork(snapshot) {
    const run = this.run;
    const what = snapshot
      ? `Start a new run restored from snapshot ${snapshot.id} (log position ${snapshot.seq}), with its own copy-on-write workspace. This run is left alone.`
      : run.road === "snapshot"
        ? "Start a new run restored from this run's newest snapshot. This run is left alone."
        : "Start a new run of the same workflow and input that reuses every result this run recorded. This run is left alone.";
    if (!(await confirmAction(`Fork ${this.id}?`, what, "Fork"))) return;
    const child = await this.act("Forking", () => api.fork(this.id, snapshot ? { snapshot: snapshot.id } : {}));
    if (!child) return;
    this.relatives = [child, ...this.relatives.filter((r) => r.id !== child.id)];
    this.renderRelatives(child.id);
    toast(`Forked as ${child.id}.`);
  }

  async resume(snapshot) {
    if (snapshot) {
      const back =
        `Roll ${this.id} back to snapshot ${snapshot.id} (log position ${snapshot.seq}). ` +
        "The log keeps its history and records the rollback; what came after runs again, and events consumed since are delivered again.";
      if (!(await confirmAction(`Resume ${this.id} from this snapshot?`, back, "Roll back"))) return;
      await this.act(
        "Rolling back",
        () => api.resume(this.id, { snapshot: snapshot.id }),
        () => toast(`${this.id} rolled back to ${snapshot.id}.`),
      );
      return;
    }
    const what =
      this.run.road === "snapshot"
        ? `Queue ${this.id} again; a worker restores its newest snapshot.`
        : `Queue ${this.id} again; recorded results are kept and a step whose error ended it runs again.`;
    if (!(await confirmAction(`Resume ${this.id}?`, what, "Resume"))) return;
    await this.act("Resuming", () => api.resume(this.id), () => toast(`${this.id} queued again.`));
  }

  async cancel() {
    const ok = await confirmAction(
      `Cancel ${this.id}?`,
      "It stops at once if no worker executes it, else at its next step boundary. A cancelled run can be resumed.",
      "Cancel run",
    );
    if (!ok) return;
    await this.act("Cancelling", () => api.cancel(this.id), () => toast(`${this.id} cancelled.`));
  }

  // -- forks and children -----------------------------------------------------------------

  async pollRelatives(again = true) {
    try {
      const runs = await api.runs({ limit: 500 });
      if (this.stopped) return;
      const mine = runs.filter((r) => r.forked_from === this.id || r.parent_id === this.id);
      const known = new Set(mine.map((r) => r.id));
      // A fork just made may be past the newest 500 runs in a busy store: keep it.
      this.relatives = [...mine, ...this.relatives.filter((r) => !known.has(r.id) && r.forked_from === this.id)];
      this.renderRelatives();
    } catch (exc) {
      if (exc.status !== 401 && again) toast(`Listing forks failed: ${exc.message}`, "error");
    }
    if (again) this.later(() => this.pollRelatives(), RELATIVES_POLL_MS);
  }

  renderRelatives(fresh) {
    if (!this.relatives.length) {
      clear(this.relativesBox);
      return;
    }
    clear(this.relativesBox).append(
      h("h3", {}, "Forks and children"),
      h(
        "ul",
        { id: "forks" },
        this.relatives.map((r) =>
          h(
            "li",
            { "data-run": r.id, class: r.id === fresh ? "fresh" : "" },
            h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, r.id),
            " ",
            statusBadge(r.status),
            h("span", { class: "muted" }, r.forked_from === this.id ? " fork" : " child"),
          ),
        ),
      ),
    );
  }

  // -- the log ----------------------------------------------------------------------------

  follow() {
    this.following = true;
    this.stopFollowing = followLog(this.id, this.lastSeq, {
      onEntry: (entry) => this.addEntry(entry),
      onEnd: () => {
        this.following = false;
        this.poll();
        this.loadSnapshots();
      },
      onTrouble: (closed) => {
        if (closed) {
          // Refused (a session that ended) or the server went away: look again later.
          this.following = false;
          this.stopFollowing = null;
        }
      },
    });
  }

  addEntry(entry) {
    if (entry.seq <= this.lastSeq) return; // seen before a reconnect
    const previous = this.entries[this.entries.length - 1];
    this.entries.push(entry);
    this.lastSeq = entry.seq;
    this.waitingNote.hidden = true;
    const start = this.run ? parseTime(this.run.created_at) : parseTime(entry.created_at);
    this.timeline.append(entryRow(entry, previous, start));
    this.placeSnapshots();
    this.track(entry);
    if (SNAPSHOT_KINDS.has(entry.kind)) this.loadSnapshots();
    this.renderPending();
    this.chartsLater();
  }

  track(entry) {
    const p = entry.payload && typeof entry.payload === "object" ? entry.payload : {};
    if (entry.kind === "model_call") {
      for (const item of (p.result && p.result.items) || []) {
        if (item.type === "tool_call" && item.name === "ask_human") {
          const args = item.arguments && typeof item.arguments === "object" ? item.arguments : {};
          this.openCalls.set(item.id, { question: args.question ?? json(item.arguments), seq: entry.seq });
        }
      }
    } else if (entry.kind === "tool_result" && p.result) {
      this.openCalls.delete(p.result.id);
    } else if (entry.kind === "wait") {
      this.openWaits.set(p.pos, { name: p.name, seq: entry.seq });
    } else if (entry.kind === "event" || entry.kind === "timeout") {
      this.openWaits.delete(p.pos);
    }
  }

  renderPending() {
    const ended = !this.run || TERMINAL.has(this.run.status);
    const questions = ended ? [] : [...this.openCalls.entries()];
    const waits = ended ? [] : [...this.openWaits.values()].filter((w) => !(w.name === "human" && questions.length));
    const key = JSON.stringify([questions.map(([id]) => id), waits.map((w) => w.seq), [...this.sentAnswers]]);
    if (key === this.pendingKey) return;
    this.pendingKey = key;
    clear(this.pending);
    this.pending.hidden = !questions.length && !waits.length;
    for (const [callId, { question }] of questions) {
      const sent = this.sentAnswers.has(callId);
      const answer = h("textarea", { id: "answer", rows: 3, placeholder: "Your answer", disabled: sent });
      const send = h("button", { type: "submit", class: "primary", disabled: sent }, "Send answer");
      this.pending.append(
        h(
          "form",
          {
            class: "question card",
            "data-call": callId,
            onsubmit: async (event) => {
              event.preventDefault();
              const text = answer.value.trim();
              if (!text) {
                toast("Write an answer first.", "error");
                return;
              }
              const ok = await confirmAction(
                "Send this answer?",
                h("div", {}, h("p", {}, "The agent asked: ", h("q", {}, question)), h("p", {}, "Answer: ", h("q", {}, text))),
                "Send answer",
              );
              if (!ok) return;
              send.disabled = true;
              const done = await this.act("Sending the answer", () => api.send(this.id, "human", JSON.stringify({ text })));
              if (done) {
                this.sentAnswers.add(callId);
                toast("Answer sent.");
                this.renderPending();
              } else {
                send.disabled = false;
              }
            },
          },
          h("h2", {}, "The agent asks"),
          h("p", { class: "question-text" }, question),
          answer,
          h("div", { class: "buttons" }, send, sent ? h("span", { class: "muted" }, " sent; waiting for the run to take it") : null),
        ),
      );
    }
    for (const wait of waits) {
      this.pending.append(
        h(
          "div",
          { class: "wait card", "data-event": wait.name },
          h("p", {}, "The run waits for the event ", h("b", { class: "mono" }, wait.name), "."),
          this.button("Send it…", () => this.sendEventDialog(wait.name, ""), { primary: true }),
        ),
      );
    }
  }

  // -- snapshots --------------------------------------------------------------------------

  async pollSnapshots() {
    if (!this.run || this.run.road === "snapshot") await this.loadSnapshots();
    this.later(() => this.pollSnapshots(), SNAPSHOT_POLL_MS);
  }

  async loadSnapshots() {
    if (this.loadingSnapshots) {
      this.snapshotsAgain = true;
      return;
    }
    this.loadingSnapshots = true;
    try {
      const snaps = await api.snapshots(this.id);
      if (this.stopped) return;
      const changed = JSON.stringify(snaps) !== JSON.stringify(this.snapshots);
      this.snapshots = snaps;
      if (changed) {
        this.redrawSnapshots();
        this.chartsLater();
      }
    } catch (exc) {
      if (exc.status !== 401) toast(`Listing snapshots failed: ${exc.message}`, "error");
    } finally {
      this.loadingSnapshots = false;
    }
    if (this.snapshotsAgain) {
      this.snapshotsAgain = false;
      this.loadSnapshots();
    }
  }

  redrawSnapshots() {
    for (const el of this.timeline.querySelectorAll(".snapshot-card")) el.remove();
    this.placeSnapshots();
  }

  restoresOf(snapshotId) {
    return this.entries
      .filter((e) => e.kind === "restored" && e.payload && e.payload.snapshot === snapshotId)
      .map((e) => e.payload);
  }

  placeSnapshots() {
    for (const snap of this.snapshots) {
      const existing = this.timeline.querySelector(`.snapshot-card[data-snapshot="${CSS.escape(snap.id)}"]`);
      const after = snap.seq === 0 ? null : this.timeline.querySelector(`#entry-${snap.seq}`);
      if (snap.seq !== 0 && !after) continue; // its entry has not arrived yet
      const restores = this.restoresOf(snap.id);
      if (existing && existing.dataset.restores === String(restores.length)) continue;
      const actions = [this.button("Fork from here", () => this.fork(snap))];
      const run = this.run;
      if (run && !["running", "waiting"].includes(run.status)) {
        // Time travel: any of its snapshots, whether the run ended or waits suspended.
        actions.push(this.button("Resume from here", () => this.resume(snap)));
      }
      const row = snapshotRow(snap, restores, actions);
      row.dataset.restores = String(restores.length);
      if (existing) existing.replaceWith(row);
      else if (!after) this.timeline.prepend(row);
      else {
        // After its entry and any snapshot rows already placed there.
        let spot = after;
        while (spot.nextSibling && spot.nextSibling.classList.contains("snapshot-card")) spot = spot.nextSibling;
        spot.after(row);
      }
    }
  }

  // -- measures and charts ----------------------------------------------------------------

  chartsLater() {
    if (this.chartsDue) return;
    this.chartsDue = true;
    this.later(() => {
      this.chartsDue = false;
      this.renderCharts();
    }, 300);
  }

  renderCharts() {
    if (this.stopped) return;
    const start = this.run ? parseTime(this.run.created_at) : this.entries.length ? parseTime(this.entries[0].created_at) : Date.now();
    const since = (iso) => Math.max(0, (parseTime(iso) - start) / 1000);
    const lastTime = Math.max(
      1,
      ...this.entries.map((e) => since(e.created_at)),
      ...this.snapshots.map((snap) => since(snap.created_at)),
    );
    const secs = (v) => duration(v);

    // Step latencies, by kind.
    const latencies = [];
    for (let i = 1; i < this.entries.length; i += 1) {
      const e = this.entries[i];
      if (STEP_KINDS.has(e.kind)) {
        const value = (parseTime(e.created_at) - parseTime(this.entries[i - 1].created_at)) / 1000;
        latencies.push({ kind: e.kind, seq: e.seq, name: e.payload && e.payload.name, value });
      }
    }
    const latencyRows = [...STEP_KINDS]
      .map((kind) => {
        const values = latencies.filter((l) => l.kind === kind).map((l) => l.value).sort((a, b) => a - b);
        if (!values.length) return null;
        return h(
          "tr",
          { "data-kind": kind },
          h("td", {}, kind),
          h("td", { class: "num" }, String(values.length)),
          h("td", { class: "num" }, duration(quantile(values, 0.5))),
          h("td", { class: "num" }, duration(quantile(values, 0.95))),
          h("td", { class: "num" }, duration(values[values.length - 1])),
        );
      })
      .filter(Boolean);

    // Tokens per turn.
    const turns = this.entries
      .filter((e) => e.kind === "model_call" && e.payload && e.payload.result && e.payload.result.usage)
      .map((e, i) => ({ turn: i + 1, seq: e.seq, ...e.payload.result.usage }));
    const totalIn = turns.reduce((sum, t) => sum + (t.input_tokens || 0), 0);
    const totalOut = turns.reduce((sum, t) => sum + (t.output_tokens || 0), 0);

    const tables = [];
    if (latencyRows.length) {
      tables.push(
        h(
          "table",
          { class: "measures", id: "latencies" },
          h("caption", {}, "Step latencies (time since the entry before)"),
          h("thead", {}, h("tr", {}, ["kind", "count", "median", "p95", "max"].map((t) => h("th", {}, t)))),
          h("tbody", {}, latencyRows),
        ),
      );
    }
    if (turns.length) {
      tables.push(
        h(
          "table",
          { class: "measures", id: "tokens" },
          h("caption", {}, `Tokens: ${totalIn} in, ${totalOut} out over ${turns.length} turn${turns.length === 1 ? "" : "s"}`),
          h("thead", {}, h("tr", {}, ["turn", "entry", "in", "out"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            turns.map((t) =>
              h(
                "tr",
                { "data-turn": t.turn },
                h("td", { class: "num" }, String(t.turn)),
                h("td", { class: "num" }, h("a", { href: `#/runs/${encodeURIComponent(this.id)}`, "data-seq": t.seq, onclick: (ev) => this.jump(ev, t.seq) }, `#${t.seq}`)),
                h("td", { class: "num" }, String(t.input_tokens ?? 0)),
                h("td", { class: "num" }, String(t.output_tokens ?? 0)),
              ),
            ),
          ),
        ),
      );
    }
    clear(this.summary).append(...tables);

    const figures = [];
    if (this.snapshots.length || (this.run && this.run.road === "snapshot")) {
      figures.push(
        h(
          "div",
          { class: "chart-cell", id: "chart-snapshots" },
          h("h3", {}, "Snapshot sizes over the run's life"),
          lineChart(
            "Snapshot sizes",
            [
              {
                name: "size",
                cls: "c-raw",
                points: this.snapshots.map((snap) => ({
                  x: since(snap.created_at),
                  y: snap.raw_bytes,
                  title: `${snap.id}: size ${bytes(snap.raw_bytes)}`,
                })),
              },
              {
                name: "stored (new bytes)",
                cls: "c-stored",
                points: this.snapshots.map((snap) => ({
                  x: since(snap.created_at),
                  y: snap.stored_bytes,
                  title: `${snap.id}: ${bytes(snap.stored_bytes)} new, saved in ${ms((snap.dump_ms || 0) + (snap.store_ms || 0))}`,
                })),
              },
            ],
            { yFormat: bytes, xFormat: secs, xMax: lastTime, empty: "No snapshots yet." },
          ),
        ),
      );
    }
    const recoveries = this.entries
      .filter((e) => RECOVERY_KINDS.has(e.kind))
      .map((e) => {
        const p = e.payload || {};
        const extra =
          e.kind === "restored"
            ? `: fetch ${ms(p.fetch_ms)}, restore ${ms(p.restore_ms)}`
            : p.dump_ms !== undefined
              ? `: dump ${ms(p.dump_ms)}`
              : p.message
                ? `: ${p.message}`
                : "";
        return { x: since(e.created_at), lane: e.kind, title: `#${e.seq} ${e.kind}${extra}` };
      });
    const used = LANES.filter((lane) => recoveries.some((r) => r.lane === lane.name));
    figures.push(
      h(
        "div",
        { class: "chart-cell", id: "chart-recovery" },
        h("h3", {}, "Recovery events"),
        eventChart("Recovery events", used, recoveries, { xMax: lastTime * 1.05, xFormat: secs }),
      ),
    );
    if (turns.length) {
      figures.push(
        h(
          "div",
          { class: "chart-cell", id: "chart-tokens" },
          h("h3", {}, "Tokens per turn"),
          barChart(
            "Tokens per turn",
            turns.map((t) => ({
              label: String(t.turn),
              parts: [
                { value: t.input_tokens || 0, cls: "c-in", title: `turn ${t.turn}: ${t.input_tokens} in` },
                { value: t.output_tokens || 0, cls: "c-out", title: `turn ${t.turn}: ${t.output_tokens} out` },
              ],
            })),
            [
              ["c-in", "input"],
              ["c-out", "output"],
            ],
            { yFormat: (v) => String(Math.round(v)), xLabel: "turn" },
          ),
        ),
      );
    }
    if (latencies.length) {
      figures.push(
        h(
          "div",
          { class: "chart-cell", id: "chart-latency" },
          h("h3", {}, "Step latencies"),
          barChart(
            "Step latencies",
            latencies.map((l) => ({
              label: `#${l.seq}`,
              parts: [{ value: l.value, cls: `c-${l.kind}`, title: `#${l.seq} ${l.kind} ${l.name ?? ""}: ${duration(l.value)}` }],
            })),
            [
              ["c-step", "step"],
              ["c-model_call", "model call"],
              ["c-tool_result", "tool"],
            ],
            { yFormat: (v) => duration(v), xLabel: "log entry" },
          ),
        ),
      );
    }
    clear(this.charts).append(...figures);
  }

  jump(event, seq) {
    event.preventDefault();
    const el = document.getElementById(`entry-${seq}`);
    if (el) el.scrollIntoView({ behavior: "smooth", block: "center" });
  }
}
