// One row per log entry, by kind: the conversation (user, assistant, tool calls and their
// results), steps and their retries, waits and events, recoveries, snapshots, divergences.

import { bytes, clock, duration, h, json, ms, parseTime } from "./dom.js";

// Entries that record a journaled call's result; their latency is the time since the entry
// before them (the same measure as the server's torpor_step_seconds).
export const STEP_KINDS = new Set(["step", "model_call", "tool_result"]);

// Entries about crashes, restores and checkpoints: the recovery chart draws these.
export const RECOVERY_KINDS = new Set([
  "recovered",
  "restored",
  "sandbox_died",
  "released",
  "suspended",
  "snapshot",
  "resumed",
  "rollback",
  "forked",
  "step_retry",
  "divergence",
  "executor_failed",
]);

const CATEGORY = {
  user: "talk",
  model_call: "talk",
  tool_result: "talk",
  step: "step",
  value: "step",
  patch: "step",
  child: "step",
  child_result: "step",
  wait: "wait",
  event: "wait",
  timeout: "wait",
  sleep: "wait",
  recovered: "recovery",
  restored: "recovery",
  sandbox_died: "recovery",
  released: "recovery",
  resumed: "recovery",
  rollback: "recovery",
  forked: "recovery",
  snapshot: "snapshot",
  suspended: "snapshot",
  step_retry: "problem",
  divergence: "problem",
  warning: "problem",
  failed: "problem",
  executor_failed: "problem",
  completed: "end",
  cancelled: "end",
};

const LABEL = {
  user: "user",
  model_call: "model call",
  tool_result: "tool result",
  step_retry: "retry",
  child_result: "child result",
  sandbox_died: "sandbox died",
  executor_failed: "executor failed",
};

function pre(text, cls = "") {
  return h("pre", { class: `value ${cls}` }, text);
}

function errorText(error) {
  if (!error) return "";
  if (typeof error === "string") return error;
  const type = error.type ? String(error.type).split(".").pop() : "Error";
  return `${type}: ${error.message ?? json(error)}`;
}

function usageLine(usage) {
  if (!usage) return null;
  const input = usage.input_tokens ?? 0;
  const output = usage.output_tokens ?? 0;
  return h(
    "span",
    { class: "usage", "data-input": input, "data-output": output },
    `tokens: ${input} in · ${output} out`,
  );
}

function modelCall(p) {
  const result = p.result || {};
  const parts = [];
  for (const item of result.items || []) {
    if (item.type === "assistant") {
      parts.push(h("div", { class: "msg assistant" }, h("span", { class: "who" }, "assistant"), h("p", {}, item.text)));
    } else if (item.type === "tool_call") {
      const args = item.arguments ?? item.raw_arguments;
      parts.push(
        h(
          "div",
          { class: "tool-call", "data-tool": item.name, "data-call": item.id },
          h("span", { class: "who" }, "tool call"),
          h("b", {}, item.name),
          h("span", { class: "muted mono" }, ` ${item.id ?? ""}`),
          pre(json(args)),
        ),
      );
    } else {
      parts.push(pre(json(item)));
    }
  }
  if (p.error) parts.push(h("div", { class: "error" }, errorText(p.error)));
  const facts = [
    usageLine(result.usage),
    result.model ? h("span", {}, `model ${result.model}`) : null,
    result.stop_reason ? h("span", {}, `stop: ${result.stop_reason}`) : null,
    p.attempt > 1 ? h("span", { class: "warn" }, `after ${p.attempt} attempts`) : null,
  ].filter(Boolean);
  if (facts.length) parts.push(h("div", { class: "facts" }, facts));
  return parts;
}

function toolResult(p) {
  const r = p.result || {};
  if (p.error) return h("div", { class: "error" }, errorText(p.error));
  return h(
    "div",
    { class: `tool-result${r.is_error ? " is-error" : ""}`, "data-call": r.id },
    h("span", { class: "who" }, r.is_error ? "tool error" : "tool result"),
    h("b", {}, p.name),
    h("span", { class: "muted mono" }, ` ${r.id ?? ""}`),
    pre(json(r.content)),
  );
}

function body(entry) {
  const p = entry.payload && typeof entry.payload === "object" ? entry.payload : {};
  switch (entry.kind) {
    case "user": {
      const said = p.result && typeof p.result === "object" ? p.result : p;
      const text = typeof said.text === "string" ? said.text : json(entry.payload);
      return h("div", { class: "msg user" }, h("span", { class: "who" }, "user"), h("p", {}, text));
    }
    case "model_call":
      return modelCall(p);
    case "tool_result":
      return toolResult(p);
    case "step":
      return [
        h("b", {}, p.name),
        p.attempt > 1 ? h("span", { class: "warn" }, ` after ${p.attempt} attempts`) : null,
        "error" in p ? h("div", { class: "error" }, errorText(p.error)) : pre(json(p.result)),
      ];
    case "step_retry":
      return h(
        "div",
        { class: "warn" },
        `${p.name} failed (attempt ${p.attempt}); retrying in ${duration(p.delay)}: ${errorText(p.error)}`,
      );
    case "value":
      return [h("code", {}, `torpor.${p.name}()`), " = ", h("code", {}, json(p.value, 0))];
    case "patch":
      return ["patched ", h("code", {}, p.change)];
    case "wait":
      return [
        "waiting for event ",
        h("b", { class: "mono" }, p.name),
        p.deadline ? ` until ${new Date(p.deadline * 1000).toLocaleString()}` : "",
      ];
    case "event":
      return [
        "event ",
        h("b", { class: "mono" }, p.name),
        " arrived",
        pre(json(p.payload)),
      ];
    case "timeout":
      return ["the wait for ", h("b", { class: "mono" }, p.name), " timed out"];
    case "sleep":
      return `sleeping ${duration(p.seconds)} (until ${new Date(p.until * 1000).toLocaleString()})`;
    case "child":
      return ["started child run ", h("a", { href: `#/runs/${encodeURIComponent(p.child)}` }, p.child), ` (${p.workflow})`];
    case "child_result":
      return ["child run ", h("a", { href: `#/runs/${encodeURIComponent(p.child)}` }, p.child), ` ended: ${p.status}`];
    case "recovered":
      return `recovered by worker ${p.worker} (attempt ${p.attempt}): re-executing from the journal`;
    case "restored":
      return [
        "restored from snapshot ",
        h("span", { class: "mono" }, p.snapshot),
        ` (log position ${p.seq}): fetch ${ms(p.fetch_ms)}, restore ${ms(p.restore_ms)}`,
      ];
    case "snapshot":
      return ["checkpoint: snapshot ", h("span", { class: "mono" }, p.snapshot), `, dump ${ms(p.dump_ms)}`];
    case "suspended":
      return ["suspended (stopped, holding no memory) in snapshot ", h("span", { class: "mono" }, p.snapshot), `, dump ${ms(p.dump_ms)}`];
    case "released":
      return ["released for another worker, in snapshot ", h("span", { class: "mono" }, p.snapshot)];
    case "sandbox_died":
      return h("div", { class: "error" }, p.message);
    case "divergence":
      return h(
        "div",
        { class: "warn" },
        `divergence at position ${p.at}: recorded ${p.recorded}, now ${p.called}`,
        p.message ? h("div", { class: "muted" }, p.message) : null,
      );
    case "warning":
      return h("div", { class: "warn" }, p.message);
    case "forked":
      return [
        "forked from ",
        h("a", { href: `#/runs/${encodeURIComponent(p.from)}` }, p.from),
        p.snapshot ? [" at snapshot ", h("span", { class: "mono" }, p.snapshot)] : ` at position ${p.at ?? "end"}`,
      ];
    case "resumed":
      return `resumed (was ${p.from})${p.retry ? `; step at position ${p.retry} runs again` : ""}`;
    case "rollback":
      return [
        "rolled back to snapshot ",
        h("span", { class: "mono" }, p.snapshot),
        ` (log position ${p.to_seq}; was ${p.from}); entries after it no longer answer`,
        p.abandoned && p.abandoned.length ? `, ${p.abandoned.length} newer snapshot(s) left behind` : "",
      ];
    case "completed":
      return "completed";
    case "cancelled":
      return "cancelled";
    case "failed":
    case "executor_failed":
      return h("div", { class: "error" }, p.message ?? json(p));
    default:
      return pre(json(entry.payload));
  }
}

/**
 * The row of one entry. `previous` is the entry before it (for step latency), `start` the
 * run's creation time in ms.
 */
export function entryRow(entry, previous, start) {
  const at = parseTime(entry.created_at);
  const latency = STEP_KINDS.has(entry.kind) && previous ? (at - parseTime(previous.created_at)) / 1000 : null;
  const category = CATEGORY[entry.kind] || "other";
  return h(
    "li",
    {
      class: `entry cat-${category} kind-${entry.kind}`,
      id: `entry-${entry.seq}`,
      "data-seq": entry.seq,
      "data-kind": entry.kind,
    },
    h(
      "div",
      { class: "meta" },
      h("span", { class: "seq" }, `#${entry.seq}`),
      h("span", { class: "kind" }, LABEL[entry.kind] || entry.kind),
      h("span", { class: "time", title: entry.created_at }, `${clock(entry.created_at)} · +${duration((at - start) / 1000)}`),
      latency !== null ? h("span", { class: "latency", "data-latency": latency.toFixed(4) }, `took ${duration(latency)}`) : null,
    ),
    h("div", { class: "body" }, body(entry)),
  );
}

/** A snapshot's row on the timeline, after the entry at its log position. */
export function snapshotRow(snap, restores, actions) {
  const saved = (snap.dump_ms || 0) + (snap.store_ms || 0);
  return h(
    "li",
    { class: "entry snapshot-card", "data-snapshot": snap.id, "data-seq": snap.seq },
    h(
      "div",
      { class: "meta" },
      h("span", { class: "seq" }, `@${snap.seq}`),
      h("span", { class: "kind" }, "snapshot"),
      h("span", { class: "time", title: snap.created_at }, clock(snap.created_at)),
    ),
    h(
      "div",
      { class: "body" },
      h("div", { class: "mono" }, snap.id),
      h(
        "dl",
        { class: "snapfacts" },
        h("dt", {}, "size"),
        h("dd", { class: "raw-bytes" }, bytes(snap.raw_bytes)),
        h("dt", {}, "stored (new bytes)"),
        h("dd", { class: "stored-bytes" }, bytes(snap.stored_bytes)),
        h("dt", {}, "chunks new/all"),
        h("dd", {}, `${snap.new_chunks}/${snap.chunks}`),
        h("dt", {}, "save"),
        h("dd", { class: "save-time" }, `${ms(saved)} (dump ${ms(snap.dump_ms)}, store ${ms(snap.store_ms)})`),
        h("dt", {}, "restores"),
        h(
          "dd",
          { class: "restore-times" },
          restores.length
            ? restores.map((r) => `${ms((r.fetch_ms || 0) + (r.restore_ms || 0))}`).join(", ")
            : "none yet",
        ),
      ),
      actions.length ? h("div", { class: "actions" }, actions) : null,
    ),
  );
}
