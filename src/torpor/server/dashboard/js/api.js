// The HTTP API, called with the session cookie. Every request that changes state carries
// X-Torpor-Dashboard: 1, which the server requires of cookie-authenticated writes.

// The dashboard lives at <root>/dashboard/; the API at <root>/v1 (works behind a path prefix).
export const ROOT = new URL("../", new URL(".", location.href.split("#")[0]));

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || "HTTPError";
    this.details = error.details || {};
  }
}

const authListeners = new Set();

/** Called with no arguments whenever the server says the session is gone. */
export function onLoggedOut(listener) {
  authListeners.add(listener);
}

function loggedOut() {
  for (const listener of authListeners) listener();
}

export function url(path, params) {
  const u = new URL(path.replace(/^\//, ""), ROOT);
  for (const [key, value] of Object.entries(params || {})) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") u.searchParams.append(key, String(v));
    }
  }
  return u;
}

export async function request(path, { method = "GET", params, body, raw } = {}) {
  const headers = { "X-Torpor-Dashboard": "1", Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (raw !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = raw;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, params), init);
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { error: { type: "HTTPError", message: text.slice(0, 200) } };
    }
  }
  if (response.status === 401) loggedOut();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const api = {
  login: (token) => request("/dashboard/login", { method: "POST", body: { token } }),
  logout: () => request("/dashboard/logout", { method: "POST" }),
  runs: (params) => request("/v1/runs", { params }),
  run: (id) => request(`/v1/runs/${encodeURIComponent(id)}`),
  log: (id, after = 0, limit) => request(`/v1/runs/${encodeURIComponent(id)}/log`, { params: { after, limit } }),
  snapshots: (id) => request(`/v1/runs/${encodeURIComponent(id)}/snapshots`),
  send: (id, name, payloadJson) =>
    request(`/v1/runs/${encodeURIComponent(id)}/events/${encodeURIComponent(name)}`, {
      method: "POST",
      raw: payloadJson,
    }),
  checkpoint: (id) => request(`/v1/runs/${encodeURIComponent(id)}/snapshot`, { method: "POST" }),
  fork: (id, body) => request(`/v1/runs/${encodeURIComponent(id)}/fork`, { method: "POST", body: body || {} }),
  resume: (id, body = {}) =>
    request(`/v1/runs/${encodeURIComponent(id)}/resume`, { method: "POST", body }),
  cancel: (id) => request(`/v1/runs/${encodeURIComponent(id)}/cancel`, { method: "POST" }),
};

/**
 * Follow a run's log with server-sent events from `after`. Calls onEntry(entry) per entry
 * and onEnd(status) when the run has ended (then the stream is closed, not reconnected).
 * Returns a function that stops following.
 */
export function followLog(id, after, { onEntry, onEnd, onTrouble }) {
  const source = new EventSource(url(`/v1/runs/${encodeURIComponent(id)}/log/stream`, { after }));
  let closed = false;
  source.addEventListener("entry", (event) => onEntry(JSON.parse(event.data)));
  source.addEventListener("end", (event) => {
    closed = true;
    source.close();
    onEnd(JSON.parse(event.data).status);
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (with Last-Event-ID); a refused session stops it.
    if (!closed && onTrouble) onTrouble(source.readyState === EventSource.CLOSED);
  });
  return () => {
    closed = true;
    source.close();
  };
}
