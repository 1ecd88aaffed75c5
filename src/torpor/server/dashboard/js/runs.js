// The runs list: newest first, filtered by status (on the server) and road (here),
// refreshed every 2 s. Turns (model calls) are counted from each shown run's log, reading
// only the entries added since the last look.

import { api } from "./api.js";
import { ago, append, clear, h, parseTime, statusBadge, toast } from "./dom.js";

export const STATUSES = ["queued", "running", "waiting", "suspended", "completed", "failed", "cancelled"];
const ROADS = ["replay", "snapshot"];
const REFRESH_MS = 2000;
const LIMIT = 200;

// run id -> {seq, turns}: survives moving between pages.
const turnCounts = new Map();
const counting = new Set();

async function countTurns(run) {
  if (counting.has(run.id)) return (turnCounts.get(run.id) || { turns: 0 }).turns;
  counting.add(run.id);
  try {
    return await readTurns(run);
  } finally {
    counting.delete(run.id);
  }
}

async function readTurns(run) {
  const known = turnCounts.get(run.id) || { seq: 0, turns: 0 };
  if (run.last_seq <= known.seq) return known.turns;
  let { seq, turns } = known;
  for (;;) {
    const entries = await api.log(run.id, seq, 1000);
    for (const entry of entries) {
      if (entry.kind === "model_call") turns += 1;
      seq = entry.seq;
    }
    if (entries.length < 1000) break;
  }
  turnCounts.set(run.id, { seq, turns });
  return turns;
}

export class RunsView {
  constructor(root, params) {
    this.root = root;
    this.status = params.get("status") || "";
    this.road = params.get("road") || "";
    this.timer = null;
    this.stopped = false;
    this.rows = new Map();
  }

  start() {
    const statusSelect = h(
      "select",
      { id: "filter-status", "aria-label": "Status", onchange: (e) => this.setFilter("status", e.target.value) },
      h("option", { value: "" }, "all statuses"),
      STATUSES.map((s) => h("option", { value: s, selected: s === this.status }, s)),
    );
    const roadSelect = h(
      "select",
      { id: "filter-road", "aria-label": "Road", onchange: (e) => this.setFilter("road", e.target.value) },
      h("option", { value: "" }, "both roads"),
      ROADS.map((r) => h("option", { value: r, selected: r === this.road }, r)),
    );
    this.count = h("span", { class: "muted" });
    this.body = h("tbody");
    this.empty = h("p", { class: "muted empty", hidden: true }, "No runs match.");
    this.root.append(
      h(
        "section",
        { class: "runs" },
        h("div", { class: "toolbar" }, h("h1", {}, "Runs"), statusSelect, roadSelect, this.count),
        h(
          "table",
          { class: "runs-table", id: "runs" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Run", "Status", "Road", "Workflow", "Age", "Turns", "Log", "Last activity"].map((t) =>
                h("th", {}, t),
              ),
            ),
          ),
          this.body,
        ),
        this.empty,
      ),
    );
    this.refresh();
  }

  setFilter(key, value) {
    this[key] = value;
    const params = new URLSearchParams();
    if (this.status) params.set("status", this.status);
    if (this.road) params.set("road", this.road);
    const query = params.toString();
    history.replaceState(null, "", `#/${query ? `?${query}` : ""}`);
    clear(this.body);
    this.rows.clear();
    this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    try {
      const runs = await api.runs({ status: this.status || undefined, limit: LIMIT });
      if (this.stopped) return;
      const shown = runs.filter((r) => !this.road || r.road === this.road);
      this.render(shown);
      this.count.textContent = `${shown.length} run${shown.length === 1 ? "" : "s"}${runs.length >= LIMIT ? ` (newest ${LIMIT})` : ""}`;
      document.getElementById("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
      for (const run of shown) {
        countTurns(run)
          .then((turns) => this.setTurns(run.id, turns))
          .catch(() => {});
      }
    } catch (exc) {
      if (exc.status !== 401) toast(`Listing runs failed: ${exc.message}`, "error");
    }
    if (!this.stopped) this.timer = setTimeout(() => this.refresh(), document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }

  render(runs) {
    const now = Date.now();
    const keep = new Set(runs.map((r) => r.id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    let previous = null;
    for (const run of runs) {
      let row = this.rows.get(run.id);
      if (!row) {
        row = this.makeRow(run);
        this.rows.set(run.id, row);
      }
      this.fillRow(row, run, now);
      // Keep the server's order (newest first) without rebuilding rows.
      const want = previous ? previous.nextSibling : this.body.firstChild;
      if (want !== row.tr) this.body.insertBefore(row.tr, want);
      previous = row.tr;
    }
    this.empty.hidden = runs.length > 0;
  }

  makeRow(run) {
    const cells = {
      id: h("td", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, run.id)),
      status: h("td"),
      road: h("td"),
      workflow: h("td", { class: "workflow" }),
      age: h("td", { class: "num" }),
      turns: h("td", { class: "num turns" }, "…"),
      log: h("td", { class: "num" }),
      updated: h("td", { class: "num" }),
    };
    const tr = h("tr", { "data-run": run.id }, Object.values(cells));
    const known = turnCounts.get(run.id);
    if (known) cells.turns.textContent = known.turns ? String(known.turns) : "–";
    return { tr, cells, status: null };
  }

  fillRow(row, run, now) {
    const { cells } = row;
    if (row.status !== run.status) {
      clear(cells.status).append(statusBadge(run.status));
      row.status = run.status;
      row.tr.dataset.status = run.status;
    }
    cells.road.textContent = run.road;
    row.tr.dataset.road = run.road;
    append(clear(cells.workflow), [
      run.workflow,
      run.forked_from ? h("span", { class: "muted" }, ` · fork of ${run.forked_from}`) : null,
      run.parent_id ? h("span", { class: "muted" }, ` · child of ${run.parent_id}`) : null,
    ]);
    cells.age.textContent = ago(run.created_at, now).replace(" ago", "");
    cells.age.title = run.created_at;
    cells.log.textContent = String(run.last_seq);
    cells.updated.textContent = ago(run.updated_at, now);
    cells.updated.title = run.updated_at;
    row.updatedAt = parseTime(run.updated_at);
  }

  setTurns(id, turns) {
    const row = this.rows.get(id);
    if (row) row.cells.turns.textContent = turns ? String(turns) : "–";
  }

  destroy() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
