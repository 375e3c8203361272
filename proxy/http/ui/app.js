// The operator page of vllm-switch: plain JS, no framework, no build step, no third party.
//
// Reads GET /admin/status every 2 s (readiness, GPU groups, the models' counters) and the event
// stream GET /admin/events (the timeline; a state or switch event also refreshes the table at
// once). Both are fetch() calls, so the admin key can travel as an Authorization header: it is
// asked for when /admin/status answers 401 and kept in sessionStorage (this tab only), never in
// the URL. The buttons POST /admin/models/{name}/{action} and show the answer or its error.
// Every string from the proxy reaches the DOM through textContent, never as markup.
"use strict";

const KEY_STORE = "vllm-switch.admin-key";
const POLL_MS = 2000;
const TIMELINE_MAX = 100;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STATES = ["unknown", "stopped", "starting", "ready", "sleeping", "asleep", "waking", "failed"];

const page = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  locked: false, // the last /admin call answered 401: wait for a key
  rows: new Map(), // model name -> {tr, cells, buttons}
  models: new Map(), // model name -> the last status entry
  seen: new Set(), // event ids already in the timeline (a reconnect replays the recent ones)
  pending: new Set(), // models with an action in flight
  stream: null, // AbortController of the event stream
  pollTimer: 0,
  refreshTimer: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function authHeaders() {
  return page.key ? { Authorization: `Bearer ${page.key}` } : {};
}

class Unauthorized extends Error {}

// ---------------------------------------------------------------- the key

function refused(detail) {
  // the first refusal wins: the others (stream, poll, a button) follow from the same key
  if (page.locked) return;
  lock(page.key ? `the key was refused (${detail})` : "");
}

function lock(message) {
  page.locked = true;
  if (page.stream) page.stream.abort();
  $("login").hidden = false;
  $("key-error").textContent = message;
  $("forget-key").hidden = true;
  $("key").focus();
}

function useKey(key) {
  page.key = key;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  page.locked = false;
  $("login").hidden = true;
  $("key-error").textContent = "";
  $("forget-key").hidden = !key;
  poll();
  startStream();
}

// ---------------------------------------------------------------- status

async function fetchStatus() {
  const r = await fetch("/admin/status", { headers: authHeaders(), cache: "no-store" });
  if (r.status === 401) throw new Unauthorized(await errorMessage(r));
  if (!r.ok) throw new Error(await errorMessage(r));
  return r.json();
}

async function errorMessage(r) {
  try {
    const body = await r.json();
    if (body && body.error && body.error.message) return `${r.status}: ${body.error.message}`;
  } catch (_) {
    // not JSON: the status line says enough
  }
  return `${r.status} ${r.statusText}`;
}

async function poll() {
  clearTimeout(page.pollTimer);
  if (page.locked) return;
  try {
    render(await fetchStatus());
  } catch (err) {
    if (err instanceof Unauthorized) {
      refused(err.message);
      return;
    }
    $("ready").className = "badge badge-failed";
    $("ready").textContent = "unreachable";
    $("uptime").textContent = String(err.message || err);
  }
  page.pollTimer = setTimeout(poll, POLL_MS);
}

function refreshSoon() {
  // several events of one switch come together: one status read for all of them
  clearTimeout(page.refreshTimer);
  page.refreshTimer = setTimeout(poll, 100);
}

function render(status) {
  $("overview").hidden = false;
  $("timeline-section").hidden = false;
  $("version").textContent = `v${status.version}`;
  $("uptime").textContent = `up ${duration(status.uptime_s)}`;
  const ready = $("ready");
  ready.className = `badge ${status.ready ? "badge-ready" : "badge-failed"}`;
  ready.textContent = status.ready ? "ready" : "not ready";
  renderProblems(status.problems || []);
  renderGpus(status.gpus || []);
  renderModels(status.models || []);
}

function renderProblems(problems) {
  $("problems").hidden = problems.length === 0;
  $("problem-list").replaceChildren(...problems.map((p) => el("li", "", p)));
}

function renderGpus(gpus) {
  $("gpu-rows").replaceChildren(
    ...gpus.map((g) => {
      const tr = el("tr");
      tr.dataset.gpu = g.name;
      tr.append(
        el("td", "", g.name),
        el("td", "num", g.max_awake),
        el("td", g.phase ? "phase-busy" : "muted", g.phase || (g.switch_in_progress ? "switching" : "idle")),
        el("td", "num", g.phase ? `${g.phase_s.toFixed(1)} s` : ""),
        el("td", "", g.reconciled ? "yes" : "not yet"),
      );
      return tr;
    }),
  );
}

function renderModels(models) {
  const names = new Set(models.map((m) => m.name));
  for (const [name, row] of page.rows) {
    if (!names.has(name)) {
      row.tr.remove();
      page.rows.delete(name);
    }
  }
  const body = $("model-rows");
  for (const m of models) {
    page.models.set(m.name, m);
    let row = page.rows.get(m.name);
    if (!row) {
      row = newRow(m.name);
      page.rows.set(m.name, row);
    }
    body.append(row.tr); // keeps the status order; moving a row keeps its buttons' handlers
    updateRow(row, m);
  }
}

function newRow(name) {
  const tr = el("tr");
  tr.dataset.model = name;
  const cells = {};
  for (const key of ["name", "gpu", "state", "queue", "inflight", "sleep", "wake", "warmup", "failure", "actions"]) {
    cells[key] = el("td", ["queue", "inflight", "sleep", "wake", "warmup"].includes(key) ? "num" : "");
    cells[key].dataset.col = key;
    tr.append(cells[key]);
  }
  const title = el("div", "model-name", name);
  const aliases = el("div", "muted aliases");
  cells.name.append(title, aliases);
  const badge = el("span", "badge");
  const since = el("div", "muted since");
  cells.state.append(badge, since);
  const buttons = {};
  for (const action of ["sleep", "wake", "restart", "reset"]) {
    const b = el("button", `act act-${action}`, action[0].toUpperCase() + action.slice(1));
    b.type = "button";
    b.dataset.action = action;
    b.addEventListener("click", () => act(name, action));
    buttons[action] = b;
    cells.actions.append(b);
  }
  return { tr, cells, buttons, aliases, badge, since };
}

function updateRow(row, m) {
  const { cells, buttons } = row;
  row.aliases.textContent = m.aliases && m.aliases.length ? `aka ${m.aliases.join(", ")}` : "";
  cells.gpu.textContent = m.gpu;
  setBadge(row.badge, m.state);
  row.since.textContent = m.state === "ready" && m.awake_since
    ? `for ${duration(Date.now() / 1000 - m.awake_since)}` : "";
  cells.queue.textContent = m.queue_depth;
  cells.inflight.textContent = m.inflight;
  cells.sleep.textContent = ms(m.last_sleep_ms);
  cells.wake.textContent = ms(m.last_wake_ms);
  cells.warmup.textContent = ms(m.last_warmup_ms);
  cells.failure.textContent = m.failure || "";
  cells.failure.className = m.failure ? "error" : "";
  const supervised = m.process !== null && m.process !== undefined;
  const busy = page.pending.has(m.name);
  buttons.sleep.disabled = busy || m.state !== "ready";
  buttons.wake.disabled = busy || m.state === "ready";
  buttons.restart.hidden = !supervised;
  buttons.restart.disabled = busy;
  buttons.reset.hidden = supervised || m.state !== "failed";
  buttons.reset.disabled = busy;
}

function setBadge(badge, state) {
  badge.className = `badge badge-${STATES.includes(state) ? state : "unknown"}`;
  badge.textContent = state;
}

// ---------------------------------------------------------------- actions

async function act(name, action) {
  const out = $("outcome");
  page.pending.add(name);
  const row = page.rows.get(name);
  if (row && page.models.has(name)) updateRow(row, page.models.get(name));
  out.className = "muted";
  out.textContent = `${action} ${name}: waiting for the proxy...`;
  try {
    const r = await fetch(`/admin/models/${encodeURIComponent(name)}/${action}`, {
      method: "POST",
      headers: authHeaders(),
      cache: "no-store",
    });
    if (r.status === 401) {
      refused(await errorMessage(r));
      return;
    }
    if (!r.ok) {
      out.className = "error";
      out.textContent = `${action} ${name} refused (${await errorMessage(r)})`;
      return;
    }
    const o = await r.json();
    out.className = "ok";
    out.textContent = `${o.action} ${o.model}: ${o.detail} - now ${o.state}, ${ms(o.ms)} ms`;
  } catch (err) {
    out.className = "error";
    out.textContent = `${action} ${name} failed: ${err.message || err}`;
  } finally {
    page.pending.delete(name);
    poll();
  }
}

// ---------------------------------------------------------------- the event stream

function startStream() {
  if (page.stream) page.stream.abort();
  const controller = new AbortController();
  page.stream = controller;
  streamLoop(controller.signal);
}

async function streamLoop(signal) {
  let backoff = BACKOFF_MIN_MS;
  const label = $("stream");
  while (!signal.aborted && !page.locked) {
    try {
      const r = await fetch("/admin/events", { headers: authHeaders(), cache: "no-store", signal });
      if (r.status === 401) {
        refused(await errorMessage(r));
        return;
      }
      if (!r.ok || !r.body) throw new Error(await errorMessage(r));
      await readEvents(r.body, signal, (type, data) => {
        if (type === "status") {
          // live once the proxy's first event came: a stream that breaks at once keeps backing off
          label.textContent = "stream: live";
          label.className = "live";
          backoff = BACKOFF_MIN_MS;
        }
        onEvent(type, data);
      });
      if (signal.aborted) return;
      throw new Error("ended");
    } catch (err) {
      if (signal.aborted) return;
      label.className = "error";
      label.textContent = `stream: ${err.message || err}; again in ${(backoff / 1000).toFixed(1)} s`;
    }
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
  }
}

// A Server-Sent Events parser over a fetch() body (the WHATWG rules that matter here: lines end
// in CR, LF or CRLF; a blank line dispatches; `:` starts a comment; one space after the colon is
// dropped; data lines join with LF).
async function readEvents(body, signal, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  let buffer = "";
  let event = { type: "message", data: [], id: "" };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let match;
    while ((match = /\r\n|\r|\n/.exec(buffer)) !== null) {
      if (match[0] === "\r" && match.index === buffer.length - 1) break; // maybe half of CRLF
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (event.data.length) dispatch(event.type, event.data.join("\n"), event.id);
        event = { type: "message", data: [], id: event.id };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? "" : line.slice(colon + 1);
      if (v.startsWith(" ")) v = v.slice(1);
      if (field === "event") event.type = v;
      else if (field === "data") event.data.push(v);
      else if (field === "id") event.id = v;
    }
  }
}

function onEvent(type, data) {
  let ev;
  try {
    ev = JSON.parse(data);
  } catch (_) {
    return; // not ours
  }
  if (type === "status") {
    render(ev);
    return;
  }
  if (ev.id && page.seen.has(ev.id)) return;
  if (ev.id) page.seen.add(ev.id);
  if (type === "state" && page.rows.has(ev.model) && page.models.has(ev.model)) {
    const m = { ...page.models.get(ev.model), state: ev.state, failure: ev.failure };
    page.models.set(ev.model, m);
    updateRow(page.rows.get(ev.model), m);
  }
  if (type === "state" || type === "switch" || type === "operator") refreshSoon();
  if (type !== "decision" || $("show-decisions").checked) addToTimeline(type, ev);
}

// ---------------------------------------------------------------- the timeline

function describe(type, ev) {
  switch (type) {
    case "state":
      return `${ev.model}: ${ev.previous} -> ${ev.state}${ev.failure ? ` (${ev.failure})` : ""}`;
    case "switch":
      if (ev.result === "ok") {
        return `${ev.gpu}: ${ev.from} -> ${ev.to} in ${ms(ev.switch_ms)} ms (sleep ${ms(ev.sleep_ms)}, ` +
          `wake ${ms(ev.wake_ms)}, warm-up ${ms(ev.warmup_ms)})${ev.reason ? `, ${ev.reason}` : ""}`;
      }
      if (ev.result === "restored") return `${ev.gpu}: ${ev.to} woken back after the switch to ${ev.from} failed`;
      return `${ev.gpu}: ${ev.from} -> ${ev.to} failed${ev.error ? `: ${ev.error}` : ""}`;
    case "decision":
      return `${ev.gpu}: ${ev.reason}${ev.target ? ` for ${ev.target}` : ""}` +
        `${ev.victims && ev.victims.length ? `, sleeping ${ev.victims.join(", ")}` : ""}` +
        `${ev.switch ? ", switch now" : ", hold"}` +
        `${ev.waiting && ev.waiting.length ? `; waiting: ${ev.waiting.join(", ")}` : ""}`;
    case "operator":
      return `${ev.action} ${ev.model}: ${ev.detail}`;
    case "dropped":
      return `${ev.count} event(s) lost: this page read the stream too slowly`;
    default:
      return JSON.stringify(ev);
  }
}

function addToTimeline(type, ev) {
  const li = el("li", `ev ev-${type}${type === "switch" ? ` ev-${ev.result}` : ""}`);
  li.dataset.type = type;
  const at = new Date((ev.at || Date.now() / 1000) * 1000);
  const time = el("time", "", clock(at));
  time.dateTime = at.toISOString();
  li.append(time, el("span", "kind", type), el("span", "text", describe(type, ev)));
  const list = $("timeline");
  list.prepend(li);
  while (list.children.length > TIMELINE_MAX) list.lastElementChild.remove();
}

// ---------------------------------------------------------------- formatting

function ms(v) {
  return v === null || v === undefined ? "-" : Math.round(v).toLocaleString("en-US");
}

function duration(s) {
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function clock(d) {
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    useKey($("key").value.trim());
    $("key").value = "";
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    page.key = "";
    lock("");
  });
  $("forget-key").hidden = !page.key;
  poll();
  startStream();
});
