// The dashboard's entry point: login, the header, and routing between the runs list
// (#/ with ?status=&road=) and a run's page (#/runs/ID).

import { api, onLoggedOut } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { RunsView } from "./runs.js";
import { RunView } from "./run.js";

const main = document.getElementById("main");
let view = null;
let loggedIn = false;

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const match = path.match(/^\/runs\/(.+)$/);
  return match ? { page: "run", id: decodeURIComponent(match[1]), params } : { page: "runs", params };
}

function show() {
  if (view) view.destroy();
  view = null;
  clear(main);
  const where = route();
  view = where.page === "run" ? new RunView(main, where.id) : new RunsView(main, where.params);
  view.start();
}

function setChrome(on) {
  document.getElementById("nav").hidden = !on;
  document.getElementById("logout").hidden = !on;
  document.getElementById("live").hidden = !on;
}

function showLogin(message) {
  loggedIn = false;
  if (view) view.destroy();
  view = null;
  setChrome(false);
  clear(main);
  const input = h("input", {
    id: "token",
    type: "password",
    name: "token",
    autocomplete: "current-password",
    placeholder: "tp_…",
    required: true,
  });
  const error = h("p", { class: "login-error", role: "alert" }, message || "");
  const button = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h(
    "form",
    {
      id: "login",
      class: "login card",
      onsubmit: async (event) => {
        event.preventDefault();
        button.disabled = true;
        error.textContent = "";
        try {
          await api.login(input.value);
          input.value = "";
          start();
        } catch (exc) {
          error.textContent = exc.message;
          button.disabled = false;
          input.select();
        }
      },
    },
    h("h1", {}, "Log in to torpor"),
    h(
      "p",
      { class: "hint" },
      "Paste the API token that torpor server printed on its first start. It is in ",
      h("code", {}, "TORPOR_API_TOKEN"),
      " or ",
      h("code", {}, "$TORPOR_HOME/api-token"),
      " on the server's machine.",
    ),
    h("label", { for: "token" }, "API token"),
    input,
    button,
    error,
  );
  main.append(form);
  input.focus();
}

async function start() {
  // One read tells whether the session cookie is there and valid; no data is shown before.
  try {
    await api.runs({ limit: 1 });
  } catch (exc) {
    if (exc.status === 401 || exc.status === 403) {
      showLogin();
      return;
    }
    clear(main).append(h("p", { class: "error" }, `The server cannot be reached: ${exc.message}`));
    return;
  }
  loggedIn = true;
  setChrome(true);
  show();
}

onLoggedOut(() => {
  if (loggedIn) showLogin("Your session ended; log in again.");
});

window.addEventListener("hashchange", () => {
  if (loggedIn) show();
});

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api.logout();
  } catch (exc) {
    toast(`Logging out failed: ${exc.message}`, "error");
    return;
  }
  showLogin("Logged out.");
});

start();
