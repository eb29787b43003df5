// The gatewayd web console: one module, no framework, no build step. Every page is
// built from the admin API's JSON with DOM calls (never innerHTML: names and messages
// come from partners and files). Changes carry the session's CSRF token.

const STATUSES = ["PLANNED", "AVAILABLE", "RUNNING", "PAUSED", "INTERRUPTED", "ERROR", "DONE", "CANCELLED"];
const SORTS = ["id", "start", "stop", "status", "rule", "requester", "requested", "filesize"];
const FILTERS = ["status", "rule", "partner", "account", "direction", "protocol", "start", "stop", "file", "followID"];
const SVG = "http://www.w3.org/2000/svg";
const CHART_SLOTS = 300;

const state = { session: null, cleanup: null, flash: null };

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "value") e.value = v;
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

const main = () => document.getElementById("main");

function notice(text, kind = "info") {
  const box = document.getElementById("notice");
  box.replaceChildren(text ? h("p", { class: kind }, text) : "");
}

function can(area, letter) {
  const p = state.session && state.session.permissions;
  return Boolean(p && (p[area] || "").includes(letter));
}

// ------------------------------------------------------------------ formats

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

function size(n) {
  if (n === null || n === undefined || n < 0) return "—";
  let v = n;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${UNITS[i]}`;
}

const rate = (n) => (n ? `${size(n)}/s` : "—");

// Times come from the API in the gateway's time zone (RFC 3339 with its offset): shown
// as they are, the zone named in the page's footer and the columns' titles.
function time(s) {
  if (!s) return "—";
  const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)/.exec(s);
  return m ? `${m[1]} ${m[2]}` : s;
}

function duration(sec) {
  if (sec === null || sec === undefined) return "—";
  const t = Math.max(0, Math.round(sec));
  const hh = Math.floor(t / 3600);
  const mm = Math.floor((t % 3600) / 60);
  const ss = t % 60;
  if (hh) return `${hh} h ${mm} min`;
  return mm ? `${mm} min ${ss} s` : `${ss} s`;
}

const zone = () => (state.session ? state.session.timezone : "");

function value(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function badge(status) {
  return h("span", { class: `badge s-${String(status).toLowerCase()}` }, status);
}

function direction(t) {
  return `${t.isServer ? "server" : "client"} ${t.isSend ? "send" : "receive"}`;
}

// ------------------------------------------------------------------ the API

class HttpError extends Error {
  constructor(status, body) {
    const listed = body && Array.isArray(body.errors) ? body.errors.map((e) => e.message) : [];
    super(listed.join("; ") || `the gateway answered ${status}`);
    this.status = status;
    this.problems = listed;
  }
}

async function api(method, path, body, type = "application/json") {
  const headers = { "X-Gatewayd-Console": "1" };
  if (method !== "GET" && state.session && state.session.csrfToken) {
    headers["X-CSRF-Token"] = state.session.csrfToken;
  }
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = type;
    payload = type === "application/json" ? JSON.stringify(body) : body;
  }
  const r = await fetch(path, { method, headers, body: payload, credentials: "same-origin", cache: "no-store" });
  const text = await r.text();
  let data = text;
  if ((r.headers.get("Content-Type") || "").includes("json") && text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (r.status === 401 && state.session && path !== "/api/session") {
    loggedOut("Your session has ended: log in again.");
  }
  if (!r.ok) throw new HttpError(r.status, data);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== "" && v !== null && v !== undefined) q.append(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ------------------------------------------------------------------ the live stream

const live = {
  source: null,
  last: null,
  listeners: new Set(),
  start() {
    if (this.source || !can("transfers", "r")) return;
    this.source = new EventSource("/api/transfers/events");
    this.source.addEventListener("transfers", (ev) => {
      this.last = JSON.parse(ev.data);
      for (const f of this.listeners) f(this.last);
    });
    // A stream ended for good (the session ended, the daemon stopped): is the user
    // still logged in? (The browser reconnects by itself while the answer is 200.)
    this.source.addEventListener("error", async () => {
      if (!this.source || this.source.readyState !== EventSource.CLOSED) return;
      this.source = null;
      const s = await api("GET", "/api/session").catch(() => null);
      if (s && !s.user) loggedOut("Your session has ended: log in again.");
      else if (s) setTimeout(() => this.start(), 2000);
    });
  },
  stop() {
    if (this.source) this.source.close();
    this.source = null;
    this.last = null;
  },
  on(f) {
    this.listeners.add(f);
    if (this.last) f(this.last);
    return () => this.listeners.delete(f);
  },
};

// ------------------------------------------------------------------ session

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("menu").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("footer").textContent = "";
  const error = h("p", { class: "error", role: "alert", id: "login-error" }, message || "");
  const form = h(
    "form",
    { class: "login", id: "login" },
    h("h1", {}, "Log in"),
    h("label", {}, "User", h("input", { name: "user", autocomplete: "username", required: true, autofocus: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    h("button", { type: "submit" }, "Log in"),
    error,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    try {
      state.session = await api("POST", "/api/session", { user: data.get("user"), password: data.get("password") });
      started();
    } catch (e) {
      error.textContent = e.status === 401 ? "Wrong user name or password." : e.message;
    }
  });
  main().replaceChildren(form);
  form.querySelector("input").focus();
}

function loggedOut(message) {
  state.session = null;
  live.stop();
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  showLogin(message);
}

function started() {
  const s = state.session;
  for (const a of document.querySelectorAll("#nav a[data-need]")) {
    const [area, letter] = a.dataset.need.split(":");
    a.hidden = !can(area, letter);
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("menu").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${s.user} @ ${s.node}`;
  document.getElementById("footer").textContent = `Times in ${s.timezone} (the gateway's time zone) · node ${s.node}`;
  live.start();
  if (!location.hash || location.hash === "#/login") location.hash = "#/live";
  else render();
}

async function logout() {
  try {
    await api("DELETE", "/api/session");
  } catch (e) {
    notice(e.message, "error");
  }
  loggedOut("You are logged out.");
}

// ------------------------------------------------------------------ tables

function table(rows, columns, caption) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)));
  const body = rows.map((row) =>
    h("tr", {}, columns.map((c) => h("td", { "data-label": c.label }, c.cell ? c.cell(row) : value(row[c.key])))),
  );
  return h(
    "div",
    { class: "scroll" },
    h("table", {}, caption ? h("caption", {}, caption) : null, h("thead", {}, head), h("tbody", {}, body)),
  );
}

function autoColumns(rows) {
  const keys = [];
  for (const row of rows) for (const k of Object.keys(row)) if (!keys.includes(k)) keys.push(k);
  return keys.map((k) => ({ key: k, label: k }));
}

async function listPage(title, path, key, columns, extra) {
  const data = await api("GET", path);
  const rows = data[key] || [];
  main().replaceChildren(
    h("h1", {}, title),
    rows.length ? table(rows, columns || autoColumns(rows)) : h("p", {}, `No ${title.toLowerCase()}.`),
    extra ? extra(rows) : null,
  );
}

function button(label, onclick, attrs) {
  return h("button", { type: "button", onclick, ...(attrs || {}) }, label);
}

async function act(id, action, after) {
  try {
    await api("PUT", `/api/transfers/${id}/${action}`);
    notice(`Transfer ${id}: ${action} done.`);
  } catch (e) {
    notice(`Transfer ${id}: ${action} refused: ${e.message}`, "error");
  }
  if (after) await after();
}

function actions(t, after) {
  if (!can("transfers", "w")) return [];
  const found = [];
  if (t.status === "PLANNED" || t.status === "RUNNING") found.push(button("Pause", () => act(t.id, "pause", after), { "data-action": "pause" }));
  if (!t.isServer && ["PAUSED", "INTERRUPTED", "ERROR"].includes(t.status)) {
    found.push(button("Resume", () => act(t.id, "resume", after), { "data-action": "resume" }));
  }
  if (!["DONE", "CANCELLED"].includes(t.status)) found.push(button("Cancel", () => act(t.id, "cancel", after), { "data-action": "cancel" }));
  if (!t.isServer && ["ERROR", "CANCELLED", "DONE", "INTERRUPTED", "PAUSED"].includes(t.status)) {
    found.push(button("Retry", () => act(t.id, "retry", after), { "data-action": "retry" }));
  }
  return found;
}

// ------------------------------------------------------------------ live page

function chart(points) {
  const width = 600;
  const height = 120;
  const peak = Math.max(1, ...points.map((p) => p[1]));
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": "Throughput of the last minutes" });
  box.append(svg("rect", { x: 0, y: 0, width, height, class: "chart-bg" }));
  // The stream keeps one point a second for five minutes: the newest at the right.
  const slots = Math.max(CHART_SLOTS, points.length);
  const x = (i) => (((slots - points.length + i) / (slots - 1)) * width).toFixed(1);
  const coords = points.map((p, i) => `${x(i)},${(height - 4 - (p[1] / peak) * (height - 8)).toFixed(1)}`);
  if (coords.length) box.append(svg("polyline", { points: coords.join(" "), class: "chart-line" }));
  return { box };
}

function progressCells(t) {
  const bar = h("progress", { max: t.filesize || 1, value: t.filesize ? t.progress : 0, "aria-label": `Transfer ${t.id} progress` });
  if (!t.filesize) bar.removeAttribute("value"); // unknown size: an indeterminate bar
  return bar;
}

function percent(t) {
  return t.filesize ? `${Math.floor((100 * t.progress) / t.filesize)} %` : size(t.progress);
}

async function pageLive() {
  const counts = h("ul", { class: "counts", "aria-label": "Transfers by status" });
  const chartBox = h("figure", { class: "chart-box" });
  const rows = h("tbody", { id: "live-rows" });
  const empty = h("p", { id: "live-empty" }, "No transfer is running on this node.");
  const heading = h("h1", {}, "Live transfers");
  const columns = ["Id", "Rule", "With", "Direction", "File", "Progress", "Done", "Rate", "ETA", "Step", ""];
  main().replaceChildren(
    heading,
    counts,
    chartBox,
    h("h2", {}, "Running on this node"),
    empty,
    h("div", { class: "scroll" }, h("table", { id: "live" }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))), rows)),
  );
  const known = new Map();
  const update = (snap) => {
    heading.textContent = `Live transfers on ${snap.node}`;
    counts.replaceChildren(
      ...STATUSES.map((s) => h("li", {}, h("a", { href: `#/transfers?status=${s}` }, badge(s), " ", h("span", { class: "count", "data-status": s }, String(snap.counts[s] ?? "…"))))),
    );
    const { box } = chart(snap.throughput);
    const speeds = snap.throughput.map((p) => p[1]);
    const now = speeds.length ? speeds[speeds.length - 1] : 0;
    const caption = `Throughput of this node over the last 5 minutes: now ${size(Math.round(now))}/s, peak ${size(Math.round(Math.max(0, ...speeds)))}/s`;
    chartBox.replaceChildren(box, h("figcaption", {}, caption));
    const seen = new Set();
    for (const t of snap.running) {
      seen.add(t.id);
      let row = known.get(t.id);
      if (!row) {
        row = {
          tr: h("tr", { "data-id": t.id }),
          bar: progressCells(t),
          cells: {},
        };
        const cell = (name) => (row.cells[name] = h("td", { "data-label": name }));
        row.tr.append(
          h("td", { "data-label": "Id" }, h("a", { href: `#/transfers/${t.id}` }, String(t.id))),
          h("td", { "data-label": "Rule" }, t.rule),
          h("td", { "data-label": "With" }, t.partner || t.account || "—"),
          h("td", { "data-label": "Direction" }, direction(t)),
          h("td", { "data-label": "File" }, t.file),
          h("td", { "data-label": "Progress" }, row.bar),
          cell("Done"),
          cell("Rate"),
          cell("ETA"),
          cell("Step"),
          h("td", {}, actions({ ...t, status: "RUNNING" }, null)),
        );
        known.set(t.id, row);
        rows.append(row.tr);
      }
      if (t.filesize) row.bar.value = t.progress;
      row.cells.Done.textContent = `${percent(t)} (${size(t.progress)} of ${size(t.filesize)})`;
      row.cells.Rate.textContent = rate(t.rate);
      row.cells.ETA.textContent = duration(t.eta);
      row.cells.Step.textContent = t.step;
    }
    for (const [id, row] of known) {
      if (!seen.has(id)) {
        row.tr.remove();
        known.delete(id);
      }
    }
    empty.hidden = known.size > 0;
  };
  return live.on(update);
}

// ------------------------------------------------------------------ history

function historyForm(params) {
  const field = (name, label, input) => h("label", {}, label, input || h("input", { name, value: params.get(name) || "" }));
  const select = (name, options) =>
    h("select", { name }, h("option", { value: "" }, "any"), options.map((o) => h("option", { value: o, selected: params.get(name) === o }, o)));
  const form = h(
    "form",
    { class: "filters", id: "filters" },
    field("status", "Status", select("status", STATUSES)),
    field("rule", "Rule"),
    field("partner", "Partner"),
    field("account", "Account"),
    field("direction", "Direction", select("direction", ["send", "receive"])),
    field("protocol", "Protocol"),
    field("start", `Started from (${zone()})`, h("input", { name: "start", type: "datetime-local", step: 1, value: params.get("start") || "" })),
    field("stop", `Ended by (${zone()})`, h("input", { name: "stop", type: "datetime-local", step: 1, value: params.get("stop") || "" })),
    field("file", "File name (* and ?)"),
    field("followID", "Follow id"),
    h("button", { type: "submit" }, "Apply"),
    h("a", { href: "#/transfers", class: "reset" }, "Clear"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    if (params.get("sort")) next.set("sort", params.get("sort"));
    location.hash = `#/transfers?${next}`;
  });
  return form;
}

async function pageHistory(params) {
  const limit = Number(params.get("limit") || 20);
  const offset = Number(params.get("offset") || 0);
  const sort = params.get("sort") || "id-";
  const q = { limit, offset, sort };
  for (const k of FILTERS) if (params.get(k)) q[k] = params.get(k);
  const form = historyForm(params);
  let data;
  try {
    data = await api("GET", `/api/transfers${query(q)}`);
  } catch (e) {
    main().replaceChildren(h("h1", {}, "History"), form, h("p", { class: "error", role: "alert" }, e.message));
    return null;
  }
  const link = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) next.set(k, v);
    return `#/transfers?${next}`;
  };
  const sortable = (key, label) => {
    const [cur, desc] = [sort.replace(/[+-]$/, ""), sort.endsWith("-")];
    const next = cur === key && !desc ? `${key}-` : `${key}+`;
    const mark = cur === key ? (desc ? " ▼" : " ▲") : "";
    return h("a", { href: link({ sort: next, offset: 0 }), "aria-sort": cur === key ? (desc ? "descending" : "ascending") : null }, label + mark);
  };
  const tz = zone();
  const columns = [
    { label: sortable("id", "Id"), cell: (t) => h("a", { href: `#/transfers/${t.id}` }, String(t.id)) },
    { label: sortable("status", "Status"), cell: (t) => badge(t.status) },
    { label: sortable("rule", "Rule"), key: "rule" },
    { label: "With", cell: (t) => t.partner || t.account || "—" },
    { label: "Direction", cell: direction },
    { label: "Protocol", key: "protocol" },
    { label: "File", cell: (t) => t.srcFilename || t.destFilename },
    { label: sortable("filesize", "Size"), cell: (t) => size(t.filesize) },
    { label: sortable("start", `Started (${tz})`), cell: (t) => time(t.start) },
    { label: sortable("stop", `Ended (${tz})`), cell: (t) => time(t.stop) },
    { label: "Error", cell: (t) => (t.errorCode && t.errorCode !== "TeOk" ? t.errorCode : "") },
  ];
  const rows = data.transfers;
  const last = Math.min(offset + rows.length, data.total);
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Pages of transfers" },
    offset > 0 ? h("a", { href: link({ offset: Math.max(0, offset - limit) }) }, "← Previous") : null,
    h("span", {}, data.total ? `${offset + 1}–${last} of ${data.total}` : "No transfer matches."),
    last < data.total ? h("a", { href: link({ offset: offset + limit }) }, "Next →") : null,
    h(
      "label",
      {},
      "Per page ",
      h(
        "select",
        { onchange: (ev) => (location.hash = link({ limit: ev.target.value, offset: 0 })) },
        [20, 50, 100, 500].map((n) => h("option", { value: n, selected: n === limit }, String(n))),
      ),
    ),
  );
  main().replaceChildren(h("h1", {}, "History"), form, rows.length ? table(rows, columns) : null, pager);
  return null;
}

// ------------------------------------------------------------------ one transfer

const FIELDS = [
  ["id", "Id"], ["status", "Status"], ["step", "Step"], ["taskNumber", "Task number"],
  ["errorCode", "Error code"], ["errorMsg", "Error message"], ["rule", "Rule"],
  ["isServer", "Server side"], ["isSend", "Sends"], ["protocol", "Protocol"],
  ["partner", "Partner"], ["account", "Account"], ["requester", "Requester"],
  ["requested", "Requested"], ["srcFilename", "Source file"], ["destFilename", "Destination file"],
  ["localFilepath", "Local path"], ["remoteFilepath", "Remote path"], ["filesize", "Size"],
  ["progress", "Progress"], ["sha256", "SHA-256"], ["start", "Started"], ["stop", "Ended"],
  ["remainingAttempts", "Attempts left"], ["nextAttempt", "Next attempt"],
  ["nextRetryDelay", "Next retry delay (s)"], ["retryIncrementFactor", "Retry factor"],
  ["expires", "Expires"], ["followID", "Follow id"], ["remoteID", "Remote id"],
  ["parentID", "Parent"], ["node", "Node"], ["takenOverBy", "Taken over by"],
  ["takenOverAt", "Taken over at"], ["transferInfo", "Transfer info"],
];
const TIMES = new Set(["start", "stop", "nextAttempt", "expires", "takenOverAt"]);

async function pageTransfer(id) {
  const heading = h("h1", {}, `Transfer ${id}`);
  const status = h("p", { class: "status-line" });
  const bar = h("progress", { id: "transfer-progress", max: 1, value: 0, "aria-label": "Progress" });
  const figures = h("span", { id: "transfer-figures" });
  const buttons = h("div", { class: "actions", id: "transfer-actions" });
  const list = h("dl", { class: "fields" });
  main().replaceChildren(heading, status, h("p", { class: "bar" }, bar, " ", figures), buttons, list);
  let row = null;
  let running = false;
  const show = (t) => {
    row = t;
    status.replaceChildren("Status ", badge(t.status), ` · step ${t.step}`);
    status.dataset.status = t.status;
    bar.max = t.filesize > 0 ? t.filesize : 1;
    bar.value = t.filesize > 0 ? t.progress : t.status === "DONE" ? 1 : 0;
    figures.textContent = `${size(t.progress)} of ${size(t.filesize)}`;
    buttons.replaceChildren(...actions(t, refresh));
    list.replaceChildren(
      ...FIELDS.flatMap(([k, label]) => {
        let v = t[k];
        if (TIMES.has(k)) v = v ? `${time(v)} (${zone()})` : null;
        else if (k === "filesize" || k === "progress") v = v >= 0 ? `${size(v)} (${v} bytes)` : null;
        else v = value(v);
        return [h("dt", {}, label), h("dd", { "data-field": k }, v || "—")];
      }),
    );
  };
  const refresh = async () => {
    try {
      show(await api("GET", `/api/transfers/${id}`));
    } catch (e) {
      notice(e.message, "error");
    }
  };
  await refresh();
  // While it runs on this node, the live stream moves the bar; its start and end
  // (it appears in or leaves the stream) fetch the row again.
  const off = live.on((snap) => {
    const t = snap.running.find((r) => r.id === Number(id));
    if (t) {
      if (!running || (row && row.status !== "RUNNING")) refresh();
      running = true;
      bar.max = t.filesize || 1;
      bar.value = t.filesize ? t.progress : 0;
      figures.textContent = `${percent(t)} · ${size(t.progress)} of ${size(t.filesize)} · ${rate(t.rate)} · ETA ${duration(t.eta)}`;
    } else if (running || (row && ["PLANNED", "RUNNING"].includes(row.status))) {
      running = false;
      refresh();
    }
  });
  return off;
}

// ------------------------------------------------------------------ new transfer

async function pageNew() {
  const [rules, partners] = await Promise.all([
    api("GET", "/api/rules").catch(() => ({ rules: [] })),
    api("GET", "/api/partners").catch(() => ({ partners: [] })),
  ]);
  const options = (items) => items.map((i) => h("option", { value: i.name }, i.name));
  const errors = h("ul", { class: "error", role: "alert" });
  const client = h(
    "form",
    { class: "stack", id: "new-transfer" },
    h("h2", {}, "Client transfer"),
    h("label", {}, "Rule", h("select", { name: "rule", required: true }, options(rules.rules))),
    h("label", {}, "Partner", h("select", { name: "partner", required: true }, options(partners.partners))),
    h("label", {}, "File", h("input", { name: "file", required: true })),
    h("label", {}, "Start at (empty: now)", h("input", { name: "start", type: "datetime-local", step: 1 })),
    h("label", {}, "Attempts", h("input", { name: "nbOfAttempts", type: "number", min: 0 })),
    h("button", { type: "submit" }, "Create"),
  );
  const pre = h(
    "form",
    { class: "stack", id: "preregister" },
    h("h2", {}, "Pre-register a server transfer"),
    h("label", {}, "Rule", h("select", { name: "rule", required: true }, options(rules.rules))),
    h("label", {}, "Account", h("input", { name: "account", required: true })),
    h("label", {}, "File", h("input", { name: "file", required: true })),
    h("label", {}, "Valid for (seconds)", h("input", { name: "validFor", type: "number", min: 1 })),
    h("button", { type: "submit" }, "Pre-register"),
  );
  const submit = (form, path) =>
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      for (const [k, v] of new FormData(form)) {
        if (v === "") continue;
        body[k] = ["nbOfAttempts", "validFor"].includes(k) ? Number(v) : v;
      }
      try {
        const t = await api("POST", path, body);
        location.hash = `#/transfers/${t.id}`;
      } catch (e) {
        errors.replaceChildren(...(e.problems.length ? e.problems : [e.message]).map((m) => h("li", {}, m)));
      }
    });
  submit(client, "/api/transfers");
  submit(pre, "/api/transfers/preregister");
  main().replaceChildren(h("h1", {}, "New transfer"), errors, h("div", { class: "columns" }, client, pre));
  return null;
}

// ------------------------------------------------------------------ rules

function chainList(tasks) {
  if (!tasks || !tasks.length) return h("p", { class: "muted" }, "none");
  return h("ol", { class: "chain" }, tasks.map((t) => h("li", {}, h("strong", {}, t.type), " ", h("code", {}, value(t.args)))));
}

function chains(rule) {
  return h(
    "div",
    { class: "chains" },
    ["pre", "post", "error"].map((k) => h("section", {}, h("h3", {}, { pre: "Before the data", post: "After the data", error: "On error" }[k]), chainList(rule[k]))),
  );
}

async function pageRules() {
  const data = await api("GET", "/api/rules");
  main().replaceChildren(
    h("h1", {}, "Rules"),
    data.rules.length ? null : h("p", {}, "No rule."),
    ...data.rules.map((r) =>
      h("article", { class: "card" }, h("h2", {}, h("a", { href: `#/rules/${encodeURIComponent(r.name)}` }, r.name), " ", h("small", {}, `${r.direction} · ${r.path}`)), r.comment ? h("p", {}, r.comment) : null, chains(r)),
    ),
  );
  return null;
}

// A YAML text area with its line numbers: the API's problems ("line N: ...") are listed
// under it and their lines marked. The rules' editor and the accounts', partners' and
// users' share it.
function yamlEditor({ id, label, text, readonly, problemsId }) {
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const area = h("textarea", { id, spellcheck: "false", rows: 18, "aria-label": label, readonly });
  area.value = text;
  const problems = h("ul", { id: problemsId, class: "error", role: "alert" });
  const lines = (bad) => {
    const count = area.value.split("\n").length;
    gutter.replaceChildren(...Array.from({ length: count }, (_, i) => h("span", { class: bad.has(i + 1) ? "bad" : null, "data-line": i + 1 }, String(i + 1))));
  };
  lines(new Set());
  area.addEventListener("input", () => lines(new Set()));
  area.addEventListener("scroll", () => (gutter.scrollTop = area.scrollTop));
  return {
    area,
    problems,
    box: h("div", { class: "editor" }, gutter, area),
    clear() {
      problems.replaceChildren();
      lines(new Set());
    },
    show(error) {
      const bad = new Set();
      problems.replaceChildren();
      for (const m of error.problems.length ? error.problems : [error.message]) {
        const found = /^line (\d+): /.exec(m);
        if (found) bad.add(Number(found[1]));
        problems.append(h("li", { "data-line": found ? found[1] : null }, m));
      }
      lines(bad);
    },
  };
}

async function pageRule(name) {
  const rule = await api("GET", `/api/rules/${encodeURIComponent(name)}`);
  const source = await api("GET", `/api/rules/${encodeURIComponent(name)}/source`).catch(() => null);
  const parts = [h("h1", {}, `Rule ${rule.name}`), h("p", {}, `${rule.direction} · ${rule.path}`), chains(rule)];
  if (typeof source === "string") {
    const editor = yamlEditor({ id: "rule-yaml", label: "The rule's YAML", text: source, readonly: !can("rules", "w"), problemsId: "rule-problems" });
    parts.push(h("h2", {}, "YAML"), editor.box, editor.problems);
    if (can("rules", "w")) {
      const save = button("Save", async () => {
        editor.clear();
        try {
          await api("PUT", `/api/rules/${encodeURIComponent(name)}`, editor.area.value, "application/yaml");
          notice(`Rule ${name} saved and in force.`);
        } catch (e) {
          editor.show(e);
          notice(`Rule ${name} not saved: nothing was changed.`, "error");
        }
      }, { id: "rule-save" });
      parts.push(h("div", { class: "actions" }, save));
    }
  }
  main().replaceChildren(...parts);
  return null;
}

// ------------------------------------------------------------------ inventory

const pageServers = () =>
  listPage("Servers", "/api/servers", "servers", [
    { label: "Name", key: "name" },
    { label: "Protocol", key: "protocol" },
    { label: "Address", cell: (s) => `${s.address}:${s.boundPort || s.port}` },
    { label: "State", cell: (s) => h("span", { class: `badge st-${s.state}` }, s.state) },
    { label: "Options", cell: (s) => h("code", {}, value(s.options)) },
  ]);

// ------------------------------------------------------------------ accounts, partners, users

// How each kind is written back: its fields as `PUT /api/KIND/NAME` takes them, built
// from what GET shows (which never has a secret: the API keeps those left out).
const OBJECTS = {
  accounts: {
    title: "Accounts",
    one: "account",
    area: "servers",
    fields: (a) => ({ public_keys: a.publicKeys, enabled: a.enabled, max_uploads: a.maxUploads, max_downloads: a.maxDownloads }),
    template: 'password: ""\npublic_keys: []\nenabled: true\n',
    help:
      "The fields of an account under accounts: in gatewayd.yaml. A password given here is hashed (argon2id) before it is written; it is never shown back, " +
      "so the editor leaves it out: without a password line the current one is kept. public_keys: OpenSSH public key lines. enabled: false disables the account.",
  },
  partners: {
    title: "Partners",
    one: "partner",
    area: "partners",
    fields: (p) => ({ protocol: p.protocol, address: p.address, port: p.port, login: p.login, max_transfers: p.maxTransfers, enabled: p.enabled, ...p.options }),
    template: 'protocol: sftp\naddress: ""\nport: 22\nlogin: ""\npassword: ""\nhost_keys: []\nenabled: true\n',
    help:
      "The fields of a partner under partners: in gatewayd.yaml (those of its protocol). Its password (and an SFTP partner's private_key and private_key_passphrase) " +
      "are never shown, so the editor leaves them out: without those lines the current ones are kept. enabled: false disables the partner.",
  },
  users: {
    title: "Users",
    one: "API user",
    area: "users",
    fields: (u) => ({ permissions: u.permissions, enabled: u.enabled }),
    template: 'password: ""\npermissions:\n  transfers: r\nenabled: true\n',
    help:
      "The fields of an API user under api.users: in gatewayd.yaml. permissions: per area (transfers, servers, partners, rules, users, administration) " +
      "the letters r, w and d; you may grant only what you have. The password is hashed before it is written and never shown, so the editor leaves it out: " +
      "without a password line the current one is kept. enabled: false disables the user (its sessions and tokens stop working).",
  },
};

// YAML for the editor: one field a line (so that the API's "line N" points at it),
// plain scalars where they read back as the same string, JSON's quoted form (which
// YAML reads too) otherwise.
const YAML_WORDS = /^(y|n|yes|no|on|off|true|false|null|~)$/i;

function scalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "string") return /^[A-Za-z_/][A-Za-z0-9_./@+-]*$/.test(v) && !YAML_WORDS.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v);
}

function toYaml(obj, indent = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj)) {
    if (v === null || v === undefined) continue; // left out: its default
    const key = `${indent}${scalar(k)}:`;
    if (Array.isArray(v)) {
      out.push(v.length ? key : `${key} []`);
      for (const item of v) out.push(`${indent}  - ${item !== null && typeof item === "object" ? JSON.stringify(item) : scalar(item)}`);
    } else if (typeof v === "object") {
      out.push(Object.keys(v).length ? `${key}\n${toYaml(v, `${indent}  `)}` : `${key} {}`);
    } else out.push(`${key} ${scalar(v)}`);
  }
  return out.join("\n");
}

const objectPath = (kind, name) => `/api/${kind}/${encodeURIComponent(name)}`;

function objectActions(kind, row) {
  const o = OBJECTS[kind];
  const box = h("div", { class: "actions", "data-object": row.name });
  const failed = (what) => (e) => notice(`${o.one} ${row.name}: ${what} refused: ${e.message}`, "error");
  const buttons = [];
  if (can(o.area, "w")) {
    buttons.push(button("Edit", () => (location.hash = `#/${kind}/edit/${encodeURIComponent(row.name)}`), { "data-action": "edit" }));
    const verb = row.enabled ? "disable" : "enable";
    buttons.push(
      button(row.enabled ? "Disable" : "Enable", async () => {
        try {
          await api("PUT", objectPath(kind, row.name), { ...o.fields(row), enabled: !row.enabled });
          state.flash = [`${o.one} ${row.name}: ${verb}d.`, "info"];
          await render();
        } catch (e) {
          failed(verb)(e);
        }
      }, { "data-action": verb }),
    );
  }
  if (can(o.area, "d")) {
    // Asked in the page (no window.confirm): the question names what goes.
    const ask = () =>
      box.replaceChildren(
        h("span", {}, `Delete ${o.one} ${row.name}?`),
        button("Yes, delete", async () => {
          try {
            await api("DELETE", objectPath(kind, row.name));
            state.flash = [`${o.one} ${row.name} deleted.`, "info"];
            await render();
          } catch (e) {
            box.replaceChildren(...buttons);
            failed("delete")(e);
          }
        }, { "data-action": "confirm-delete" }),
        button("Keep it", () => box.replaceChildren(...buttons), { "data-action": "keep" }),
      );
    buttons.push(button("Delete", ask, { "data-action": "delete" }));
  }
  box.append(...buttons);
  return box;
}

async function pageObjects(kind) {
  const o = OBJECTS[kind];
  const rows = (await api("GET", `/api/${kind}`))[kind] || [];
  const columns = autoColumns(rows).filter((c) => c.key !== "inMainFile");
  columns.push({ label: "Defined in", cell: (r) => (r.inMainFile ? "gatewayd.yaml" : "its own file") });
  const writes = can(o.area, "w") || can(o.area, "d");
  if (writes) {
    // The main file's objects are the admin's to edit there (the API refuses: 409).
    columns.push({ label: "", cell: (r) => (r.inMainFile ? h("span", { class: "muted" }, "edit it in gatewayd.yaml") : objectActions(kind, r)) });
  }
  main().replaceChildren(
    h("h1", {}, o.title),
    can(o.area, "w") ? h("div", { class: "actions" }, button(`New ${o.one}`, () => (location.hash = `#/${kind}/new`), { id: "object-new" })) : null,
    rows.length ? table(rows, columns) : h("p", {}, `No ${o.title.toLowerCase()}.`),
  );
  return null;
}

async function pageObjectEdit(kind, name) {
  const o = OBJECTS[kind];
  const creating = name === undefined;
  let text = o.template;
  let known = [];
  let inMain = false;
  if (creating) known = ((await api("GET", `/api/${kind}`))[kind] || []).map((r) => r.name);
  else {
    const current = await api("GET", objectPath(kind, name));
    inMain = current.inMainFile;
    text = `${toYaml(o.fields(current))}\n`;
  }
  const writable = can(o.area, "w") && !inMain;
  const nameInput = h("input", { id: "object-name", name: "name", required: true, autocomplete: "off", spellcheck: "false" });
  const editor = yamlEditor({ id: "object-yaml", label: `The ${o.one}'s YAML`, text, readonly: !writable, problemsId: "object-problems" });
  const parts = [
    h("h1", {}, creating ? `New ${o.one}` : `${o.one[0].toUpperCase()}${o.one.slice(1)} ${name}`),
    inMain ? h("p", { class: "error" }, `This ${o.one} is defined in gatewayd.yaml: edit it there.`) : null,
    h("p", { class: "muted", id: "object-help" }, o.help),
    creating ? h("label", { class: "name" }, "Name", nameInput) : null,
    editor.box,
    editor.problems,
  ];
  if (writable) {
    const save = button("Save", async () => {
      editor.clear();
      const target = creating ? nameInput.value.trim() : name;
      const refuse = (message) => {
        editor.show({ problems: [], message });
        notice(`${o.one} not saved: nothing was changed.`, "error");
      };
      if (!target) return refuse("give the new object a name");
      if (creating && known.includes(target)) return refuse(`${o.one} ${target} exists already: edit it from the list`);
      try {
        await api("PUT", objectPath(kind, target), editor.area.value, "application/yaml");
        state.flash = [`${o.one} ${target} saved and in force.`, "info"];
        location.hash = `#/${kind}`;
      } catch (e) {
        editor.show(e);
        notice(`${o.one} ${target} not saved: nothing was changed.`, "error");
      }
      return null;
    }, { id: "object-save" });
    parts.push(h("div", { class: "actions" }, save, h("a", { href: `#/${kind}` }, "Cancel")));
  }
  main().replaceChildren(...parts);
  return null;
}

async function pageTokens() {
  const data = await api("GET", "/api/tokens");
  const shown = h("div", { id: "new-token", role: "status" });
  const refresh = () => render();
  const columns = [
    { label: "Id", key: "id" },
    { label: "User", key: "user" },
    { label: "Comment", key: "comment" },
    { label: "Permissions", cell: (t) => value(t.permissions) },
    { label: `Created (${zone()})`, cell: (t) => time(t.created) },
    { label: `Expires (${zone()})`, cell: (t) => time(t.expires) },
    { label: "Revoked", cell: (t) => (t.revoked ? time(t.revoked) : "") },
    {
      label: "",
      cell: (t) =>
        t.revoked
          ? ""
          : button("Revoke", async () => {
              try {
                await api("DELETE", `/api/tokens/${t.id}`);
                refresh();
              } catch (e) {
                notice(e.message, "error");
              }
            }),
    },
  ];
  const form = h(
    "form",
    { class: "inline", id: "token-form" },
    h("label", {}, "Comment", h("input", { name: "comment", maxlength: 200 })),
    h("label", {}, "Lifetime (days)", h("input", { name: "days", type: "number", min: 1, max: 366, value: 1 })),
    h("button", { type: "submit" }, "Issue a token"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    try {
      const made = await api("POST", "/api/tokens", { comment: f.get("comment"), expiresIn: Number(f.get("days")) * 86400 });
      const token = made.token || "";
      shown.replaceChildren(h("p", {}, "The token, shown this once: keep it now."), h("textarea", { readonly: true, rows: 3, class: "token" }, token));
    } catch (e) {
      shown.replaceChildren(h("p", { class: "error" }, e.message));
    }
  });
  main().replaceChildren(h("h1", {}, "API tokens"), form, shown, data.tokens.length ? table(data.tokens, columns) : h("p", {}, "No token."));
  return null;
}

async function pageAutomation() {
  const sections = [
    ["Watchers", "/api/watchers", "watchers", ["pause", "resume", "fire"]],
    ["Schedules", "/api/schedules", "schedules", ["pause", "resume", "fire"]],
    ["Pollers", "/api/pollers", "pollers", ["fire"]],
  ];
  const parts = [h("h1", {}, "Automation")];
  for (const [title, path, key, verbs] of sections) {
    parts.push(h("h2", {}, title));
    try {
      const rows = (await api("GET", path))[key] || [];
      const columns = autoColumns(rows);
      if (can("rules", "w")) {
        const run = (name, verb) => async () => {
          try {
            await api("POST", `${path}/${encodeURIComponent(name)}/${verb}`);
            await render();
            notice(`${name}: ${verb} done.`);
          } catch (e) {
            notice(`${name}: ${verb} refused: ${e.message}`, "error");
          }
        };
        columns.push({ label: "", cell: (r) => h("div", { class: "actions" }, verbs.map((v) => button(v[0].toUpperCase() + v.slice(1), run(r.name, v), { "data-action": v }))) });
      }
      parts.push(rows.length ? table(rows, columns) : h("p", {}, `No ${title.toLowerCase()}.`));
    } catch (e) {
      parts.push(h("p", { class: "error" }, e.message));
    }
  }
  main().replaceChildren(...parts);
  return null;
}

async function pageNodes() {
  const about = await api("GET", "/api/about");
  const nodes = about.nodes || [];
  main().replaceChildren(
    h("h1", {}, "Cluster nodes"),
    h("p", {}, `Version ${about.version} · this node ${about.node} · started ${time(about.started)} (${zone()})`),
    nodes.length ? table(nodes, autoColumns(nodes)) : h("p", {}, "No node recorded."),
  );
  return null;
}

async function pageAudit(params) {
  const limit = 50;
  const offset = Number(params.get("offset") || 0);
  const data = await api("GET", `/api/audit${query({ limit, offset })}`);
  const columns = [
    { label: `At (${zone()})`, cell: (e) => time(e.at) },
    { label: "Who", key: "who" },
    { label: "Action", key: "action" },
    { label: "Target", key: "target" },
    { label: "Details", cell: (e) => h("code", {}, value(e.details)) },
  ];
  main().replaceChildren(
    h("h1", {}, "Audit log"),
    table(data.entries, columns),
    h(
      "nav",
      { class: "pager", "aria-label": "Pages of the audit log" },
      offset ? h("a", { href: `#/audit?offset=${Math.max(0, offset - limit)}` }, "← Newer") : null,
      data.entries.length === limit ? h("a", { href: `#/audit?offset=${offset + limit}` }, "Older →") : null,
    ),
  );
  return null;
}

// ------------------------------------------------------------------ routing

const ROUTES = [
  [/^\/live$/, pageLive],
  [/^\/transfers$/, pageHistory],
  [/^\/transfers\/(\d+)$/, pageTransfer],
  [/^\/new$/, pageNew],
  [/^\/rules$/, pageRules],
  [/^\/rules\/([^/]+)$/, pageRule],
  [/^\/servers$/, pageServers],
  [/^\/(accounts|partners|users)$/, pageObjects],
  [/^\/(accounts|partners|users)\/new$/, pageObjectEdit],
  [/^\/(accounts|partners|users)\/edit\/([^/]+)$/, pageObjectEdit],
  [/^\/tokens$/, pageTokens],
  [/^\/automation$/, pageAutomation],
  [/^\/nodes$/, pageNodes],
  [/^\/audit$/, pageAudit],
];

// Renders run one after the other, and only the newest asked for runs: a slow page
// never overwrites the one the user went to next.
let rendering = Promise.resolve();
let wanted = 0;

function render() {
  const mine = ++wanted;
  rendering = rendering.catch(() => null).then(() => (mine === wanted ? renderNow() : null));
  return rendering;
}

async function renderNow() {
  if (!state.session) return;
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  // A change that moved to another page says how it went there.
  notice(...(state.flash || [""]));
  state.flash = null;
  const [path, search] = (location.hash.slice(1) || "/live").split("?");
  const params = new URLSearchParams(search || "");
  for (const a of document.querySelectorAll("#nav a")) {
    if (`#${path}`.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const found = ROUTES.find(([re]) => re.test(path));
  if (!found) {
    main().replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/live" }, "Back to the live transfers")));
    return;
  }
  const [re, page] = found;
  const args = path.match(re).slice(1).map(decodeURIComponent);
  try {
    const cleanup = await (page === pageHistory || page === pageAudit ? page(params) : page(...args));
    state.cleanup = typeof cleanup === "function" ? cleanup : null;
  } catch (e) {
    if (e.status === 401) return;
    main().replaceChildren(h("h1", {}, "Cannot show this page"), h("p", { class: "error", role: "alert" }, e.message));
  }
}

async function boot() {
  document.getElementById("logout").addEventListener("click", logout);
  const menu = document.getElementById("menu");
  menu.addEventListener("click", () => {
    const nav = document.getElementById("nav");
    const open = !nav.classList.contains("open");
    nav.classList.toggle("open", open);
    menu.setAttribute("aria-expanded", String(open));
  });
  window.addEventListener("hashchange", () => {
    document.getElementById("nav").classList.remove("open");
    render().then(() => main().focus({ preventScroll: true }));
  });
  try {
    const s = await api("GET", "/api/session");
    if (s.user) {
      state.session = s;
      started();
      return;
    }
  } catch (e) {
    showLogin(e.message);
    return;
  }
  showLogin("");
}

boot();
