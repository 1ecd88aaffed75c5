// Small charts drawn as inline SVG: lines over time, bars per item, events on lanes.
// Every mark has a <title>, so hovering shows its exact value.

import { h, s } from "./dom.js";

const W = 640;
const H = 190;
const M = { left: 64, right: 14, top: 14, bottom: 30 };

function scale(domain0, domain1, range0, range1) {
  const span = domain1 - domain0 || 1;
  return (v) => range0 + ((v - domain0) / span) * (range1 - range0);
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function frame(label, { yMax, yFormat, xMax, xFormat, xTicks }) {
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": label,
    preserveAspectRatio: "xMinYMin meet",
  });
  const y = scale(0, yMax, H - M.bottom, M.top);
  const x = scale(0, xMax, M.left, W - M.right);
  for (let i = 0; i <= 4; i += 1) {
    const v = (yMax * i) / 4;
    svg.append(
      s("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: M.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, yFormat(v)),
    );
  }
  for (const v of xTicks ?? [0, xMax / 4, xMax / 2, (3 * xMax) / 4, xMax]) {
    svg.append(s("text", { x: x(v), y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" }, xFormat(v)));
  }
  svg.append(s("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  return { svg, x, y };
}

function legend(items) {
  return h(
    "div",
    { class: "legend" },
    items.map(([cls, text]) => h("span", {}, h("i", { class: `swatch ${cls}` }), text)),
  );
}

export function emptyChart(text) {
  return h("p", { class: "muted chart-empty" }, text);
}

/**
 * Lines over time. `series`: [{name, cls, points: [{x, y, title}]}]; x in seconds, the axis
 * spanning at least `xMax`.
 */
export function lineChart(label, series, { yFormat, xFormat, xMax: span, empty }) {
  const all = series.flatMap((one) => one.points);
  if (!all.length) return emptyChart(empty || "Nothing to draw yet.");
  const xMax = Math.max(1e-3, span || 0, ...all.map((p) => p.x)) * 1.05;
  const yMax = niceMax(Math.max(...all.map((p) => p.y)));
  const { svg, x, y } = frame(label, { yMax, yFormat, xMax, xFormat });
  for (const one of series) {
    const d = one.points.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ");
    if (one.points.length > 1) svg.append(s("path", { d, class: `line ${one.cls}` }));
    for (const p of one.points) {
      svg.append(s("circle", { cx: x(p.x), cy: y(p.y), r: 3.5, class: `dot ${one.cls}` }, s("title", {}, p.title)));
    }
  }
  return h("figure", { class: "chart-box" }, svg, legend(series.map((one) => [one.cls, one.name])));
}

/**
 * Bars, one per item, stacked by part. `bars`: [{label, parts: [{value, cls, title}]}].
 */
export function barChart(label, bars, parts, { yFormat, xLabel }) {
  if (!bars.length) return emptyChart("Nothing to draw yet.");
  const totals = bars.map((b) => b.parts.reduce((sum, p) => sum + p.value, 0));
  const yMax = niceMax(Math.max(...totals));
  const n = bars.length;
  const ticks = n <= 6 ? bars.map((_, i) => i + 0.5) : [0.5, Math.floor(n / 2) + 0.5, n - 0.5];
  const { svg, x, y } = frame(label, {
    yMax,
    yFormat,
    xMax: n,
    xFormat: (v) => bars[Math.floor(v)]?.label ?? "",
    xTicks: ticks,
  });
  const width = Math.max(1, ((W - M.left - M.right) / n) * 0.7);
  bars.forEach((bar, i) => {
    let base = 0;
    for (const part of bar.parts) {
      const top = base + part.value;
      svg.append(
        s(
          "rect",
          {
            x: x(i + 0.5) - width / 2,
            y: y(top),
            width,
            height: Math.max(0, y(base) - y(top)),
            class: `bar ${part.cls}`,
          },
          s("title", {}, part.title),
        ),
      );
      base = top;
    }
  });
  return h("figure", { class: "chart-box" }, svg, legend(parts), xLabel ? h("figcaption", {}, xLabel) : null);
}

/**
 * Events on lanes over time. `lanes`: [{name, cls}]; `events`: [{x, lane, title}].
 */
export function eventChart(label, lanes, events, { xMax, xFormat }) {
  if (!events.length) return emptyChart("No recovery events: the run was never interrupted, restored or retried.");
  const laneH = 22;
  const height = M.top + lanes.length * laneH + M.bottom;
  const left = 110;
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": label,
    preserveAspectRatio: "xMinYMin meet",
  });
  const x = scale(0, xMax, left, W - M.right);
  lanes.forEach((lane, i) => {
    const cy = M.top + i * laneH + laneH / 2;
    svg.append(
      s("line", { x1: left, x2: W - M.right, y1: cy, y2: cy, class: "grid" }),
      s("text", { x: left - 8, y: cy + 4, class: "tick", "text-anchor": "end" }, lane.name),
    );
  });
  for (const v of [0, xMax / 4, xMax / 2, (3 * xMax) / 4, xMax]) {
    svg.append(s("text", { x: x(v), y: height - M.bottom + 16, class: "tick", "text-anchor": "middle" }, xFormat(v)));
  }
  for (const event of events) {
    const i = lanes.findIndex((lane) => lane.name === event.lane);
    const cy = M.top + i * laneH + laneH / 2;
    svg.append(
      s(
        "circle",
        { cx: x(event.x), cy, r: 5, class: `dot ${lanes[i].cls}`, "data-kind": event.lane },
        s("title", {}, event.title),
      ),
    );
  }
  return h("figure", { class: "chart-box" }, svg);
}
