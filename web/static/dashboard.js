/* The dashboard's live parts: the stream, the execution page's tree, log and controls.
 *
 * Data from the server only ever reaches the DOM through textContent and attributes (never innerHTML),
 * so an agent's message or error cannot inject markup. Calls use the login session; writes carry the
 * page's CSRF token, which web/auth.py checks.
 */
"use strict";

// What each control may move from (the state machine's VALID_TRANSITIONS, orchestrator/state_machine.py).
const CONTROL_FROM = {
  QUEUED: ["CREATED"], PAUSED: ["RUNNING", "BLOCKED"], RUNNING: ["PAUSED"],
  CANCELLED: ["CREATED", "QUEUED", "RUNNING", "BLOCKED", "PAUSED", "FAILED"],
};

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function api(method, path, body) {
  const init = {method, headers: {"Accept": "application/json"}, credentials: "same-origin"};
  if (method !== "GET") init.headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
    throw new Error("Logged out.");
  }
  const data = resp.status === 204 ? null : await resp.json();
  if (!resp.ok) throw new Error((data && data.error && data.error.message) || resp.statusText);
  return data;
}

/* el("td", {class: "x", dataset: {a: 1}}, "text", child) — text children become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function fmtDuration(start, end) {
  if (!start) return "";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  if (!(ms >= 0)) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function statusBadge(status) {
  return el("span", {class: "status status-" + status}, status);
}

function setLive(state) {
  const live = document.getElementById("live");
  if (!live) return;
  live.hidden = false;
  live.textContent = state;
  live.className = "live live-" + state;
}

/* One socket with reconnects; each (re)connect fetches a fresh short-lived token and asks for what it
 * missed since the last event it saw. */
function openStream(path, onMessage, onReconnect) {
  let lastEventId = null;
  let opened = false;
  let delay = 500;
  async function connect() {
    let token;
    try {
      token = (await api("POST", "/api/tokens/stream")).token;
    } catch (e) {
      setLive("offline");
      setTimeout(connect, delay = Math.min(delay * 2, 10000));
      return;
    }
    const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    let url = proto + "//" + window.location.host + path + "?token=" + encodeURIComponent(token);
    if (lastEventId) url += "&since=" + encodeURIComponent(lastEventId);
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";  // the server sends its JSON as binary frames
    ws.onopen = () => {
      delay = 500;
      setLive("live");
      if (opened && onReconnect) onReconnect();
      opened = true;
    };
    ws.onmessage = (e) => {
      const text = typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data);
      const msg = JSON.parse(text);
      if (msg.type === "event") lastEventId = msg.event_id;
      onMessage(msg);
    };
    ws.onclose = (e) => {
      setLive("offline");
      if (e.code === 1008) return;  // refused (scope or token): retrying will not help
      setTimeout(connect, delay = Math.min(delay * 2, 10000));
    };
  }
  connect();
}

/* ---------- Executions list ---------- */

function progressText(p) {
  return p.tasks_completed + "/" + p.tasks_total + " (" + p.percent + "%)";
}

/* Status badge, progress bar and text, current task: the same on a list row and an execution page.
   `find(name)` returns the element that shows `name`. */
function paintProgress(find, s, noTask) {
  const status = find("status");
  status.textContent = s.status;
  status.className = "status status-" + s.status;
  find("bar").style.width = s.progress.percent + "%";
  find("progress").textContent = progressText(s.progress);
  find("current").textContent = s.progress.current_task_title || noTask;
}

function updateListRow(row, msg) {
  paintProgress((name) => row.querySelector('[data-field="' + name + '"]'), msg, "");
  const updated = row.querySelector('[data-field="updated"]');
  updated.dateTime = msg.timestamp;
  updated.textContent = fmtTime(msg.timestamp);
}

function newListRow(msg) {
  return el("tr", {dataset: {executionId: msg.execution_id}},
    el("td", {}, el("a", {href: "/executions/" + encodeURIComponent(msg.execution_id)}, msg.execution_id)),
    el("td", {}, el("span", {dataset: {field: "status"}})),
    el("td", {}, el("div", {class: "bar"}, el("div", {class: "fill", dataset: {field: "bar"}})),
      el("span", {dataset: {field: "progress"}})),
    el("td", {dataset: {field: "current"}}),
    el("td", {}, ""),
    el("td", {}, el("time", {dataset: {field: "updated"}})));
}

function initExecutionsPage() {
  const table = document.getElementById("executions");
  const tbody = table.querySelector("tbody");
  const filter = table.dataset.statusFilter;
  for (const t of table.querySelectorAll("time[datetime]")) t.textContent = fmtTime(t.dateTime);
  function apply(msg) {
    let row = tbody.querySelector('tr[data-execution-id="' + CSS.escape(msg.execution_id) + '"]');
    if (!row) {
      // New executions belong on the first page only, and only when they pass its status filter.
      if ((filter && filter !== msg.status) || table.dataset.firstPage !== "yes") return;
      const empty = tbody.querySelector("tr.empty");
      if (empty) empty.remove();
      row = newListRow(msg);
      tbody.prepend(row);
    }
    updateListRow(row, msg);
  }
  // Execution updates missed while the socket was down are not replayed: read the list again.
  async function catchUp() {
    const q = new URLSearchParams({limit: "50"});
    if (filter) q.set("status", filter);
    try {
      const page = await api("GET", "/api/executions?" + q);
      for (const ex of page.executions.reverse()) apply({...ex, timestamp: ex.updated_at});
    } catch (e) { /* the next reconnect tries again */ }
  }
  openStream("/api/stream", (msg) => { if (msg.type === "execution_update") apply(msg); }, catchUp);
}

/* ---------- Execution page ---------- */

function initExecutionPage() {
  const root = document.getElementById("execution");
  const executionId = root.dataset.executionId;
  const base = "/api/executions/" + encodeURIComponent(executionId);
  let detail = JSON.parse(document.getElementById("detail-data").textContent);
  const seenEvents = new Set();
  let olderCursor = null;
  let refreshTimer = null;

  function renderSummary(s) {
    paintProgress((name) => document.getElementById("ex-" + name), s, "—");
    document.getElementById("ex-message").textContent = s.status_message || "";
    for (const button of document.querySelectorAll("[data-control]")) {
      button.disabled = !CONTROL_FROM[button.dataset.control].includes(s.status);
    }
  }

  function timing(item) {
    const parts = [];
    if (item.started_at) parts.push("started " + fmtTime(item.started_at));
    if (item.completed_at) parts.push("finished " + fmtTime(item.completed_at));
    if (item.started_at) parts.push(fmtDuration(item.started_at, item.completed_at));
    return parts.join(" · ");
  }

  function renderSubtask(sub) {
    return el("li", {class: "subtask", dataset: {subtaskId: sub.subtask_id}},
      el("div", {class: "line"},
        statusBadge(sub.status),
        el("span", {class: "title"}, sub.title),
        el("span", {class: "chip"}, sub.action),
        el("span", {class: "attempts", title: "attempt / max attempts"},
          "attempt " + sub.attempt + "/" + sub.max_attempts),
        el("span", {class: "muted"}, timing(sub)),
        sub.agent_id ? el("span", {class: "muted"}, "· " + sub.agent_id) : null,
        sub.waiting_on ? el("span", {class: "muted"},
          "· waiting on " + sub.waiting_on + " prerequisite" + (sub.waiting_on === 1 ? "" : "s")) : null,
        sub.not_before && sub.status === "QUEUED"
          ? el("span", {class: "muted"}, "· retry not before " + fmtTime(sub.not_before)) : null),
      sub.error ? el("div", {class: "error"}, sub.error) : null);
  }

  function renderBlocked(task) {
    const params = el("textarea", {class: "params", rows: 3, placeholder: '{"to": "info@example.com"}',
      "aria-label": "Params (JSON) for an approve option"});
    const error = el("div", {class: "error", role: "alert"});
    const buttons = (task.next_step_options || []).map((option) =>
      el("button", {type: "button", class: option === "cancel_execution" ? "danger" : null,
        dataset: {option}, onclick: () => resolve(task.task_id, option, params, error)}, option));
    const needsParams = (task.next_step_options || []).some((o) => o.startsWith("approve_"));
    return el("div", {class: "blocked"},
      el("strong", {}, "Blocked: "), el("span", {class: "agent-error"}, task.error_message || "no message"),
      task.suggestions && task.suggestions.length
        ? el("ul", {class: "suggestions"}, ...task.suggestions.map((s) => el("li", {}, String(s)))) : null,
      needsParams ? el("label", {class: "params-label"}, "Params for approve_* (JSON)", params) : null,
      el("div", {class: "options"}, ...buttons), error);
  }

  async function resolve(taskId, option, paramsBox, errorBox) {
    errorBox.textContent = "";
    let params = null;
    if (option.startsWith("approve_")) {
      try {
        params = JSON.parse(paramsBox.value || "null");
      } catch (e) {
        errorBox.textContent = "Params must be JSON: " + e.message;
        return;
      }
      if (!params || typeof params !== "object" || Array.isArray(params)) {
        errorBox.textContent = "Approving needs the new params as a JSON object.";
        return;
      }
    }
    try {
      detail = await api("POST", base + "/tasks/" + encodeURIComponent(taskId) + "/resolve", {option, params});
      render();
    } catch (e) {
      errorBox.textContent = e.message;
    }
  }

  function renderTree(d) {
    const phases = new Map();
    for (const task of d.tasks) {
      const key = task.phase_id || "";
      if (!phases.has(key)) phases.set(key, {title: task.phase_title || task.phase_id || "Tasks", tasks: []});
      phases.get(key).tasks.push(task);
    }
    const tree = document.getElementById("tree");
    tree.replaceChildren(...[...phases.entries()].map(([phaseId, phase]) =>
      el("section", {class: "phase", dataset: {phaseId}},
        phaseId || phases.size > 1 ? el("h3", {}, phase.title) : null,
        el("ul", {class: "tasks"}, ...phase.tasks.map((task) =>
          el("li", {class: "task status-row-" + task.status, dataset: {taskId: task.task_id, status: task.status}},
            el("div", {class: "line"},
              statusBadge(task.status),
              el("span", {class: "title"}, task.title),
              el("span", {class: "muted"}, task.subtasks_completed + "/" + task.subtasks_total + " subtasks"),
              el("span", {class: "muted"}, timing(task))),
            task.status === "BLOCKED" ? renderBlocked(task) : null,
            el("ul", {class: "subtasks"}, ...task.subtasks.map(renderSubtask))))))));
  }

  function render() {
    renderSummary(detail);
    renderTree(detail);
    loadTimeline();
  }

  // One read at a time; a render during it asks for one more read after it, so the last state shows.
  let timelineLoading = false, timelineAgain = false;
  function loadTimeline() {
    if (timelineLoading) {
      timelineAgain = true;
      return;
    }
    timelineLoading = true;
    api("GET", base + "/timeline")
      .then((t) => renderTimeline(document.getElementById("timeline"), t))
      .catch(() => { /* the next render tries again */ })
      .finally(() => {
        timelineLoading = false;
        if (timelineAgain) {
          timelineAgain = false;
          loadTimeline();
        }
      });
  }

  // Many events can arrive together: fetch the tree once for a burst.
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      try {
        detail = await api("GET", base);
        render();
      } catch (e) { /* the next message retries */ }
    }, 150);
  }

  function eventRow(ev) {
    return el("tr", {dataset: {eventId: ev.event_id, eventType: ev.event_type}},
      el("td", {}, el("time", {datetime: ev.timestamp}, fmtTime(ev.timestamp))),
      el("td", {}, el("span", {class: "chip"}, ev.event_type)),
      el("td", {}, ev.subtask_id || ev.task_id || ""),
      el("td", {}, ev.status || ""),
      el("td", {}, ev.message || ev.error_message || (ev.error_type ? ev.error_type : "")));
  }

  const typeSelect = document.getElementById("event-type");
  const tbody = document.querySelector("#events tbody");
  const olderButton = document.getElementById("older");

  async function loadEvents(reset) {
    const q = new URLSearchParams({limit: "50"});
    if (typeSelect.value) q.set("event_type", typeSelect.value);
    if (!reset && olderCursor) q.set("before", olderCursor);
    const page = await api("GET", base + "/events?" + q);
    if (reset) {
      tbody.replaceChildren();
      seenEvents.clear();
    }
    for (const ev of page.events) {
      if (seenEvents.has(ev.event_id)) continue;
      seenEvents.add(ev.event_id);
      tbody.append(eventRow(ev));
    }
    olderCursor = page.next_before;
    olderButton.hidden = !olderCursor;
    if (page.archived && !olderCursor) {  // the log's beginning is in the archive, not lost
      tbody.append(el("tr", {class: "archived-note"}, el("td", {colspan: 5},
        `${page.archived_events} earlier events were archived on ${fmtTime(page.archived_at)}; ` +
        "an admin can restore them (orchestrator archive restore).")));
    }
  }

  typeSelect.addEventListener("change", () => loadEvents(true));
  olderButton.addEventListener("click", () => loadEvents(false));

  for (const button of document.querySelectorAll("[data-control]")) {
    button.addEventListener("click", async () => {
      const box = document.getElementById("control-error");
      box.textContent = "";
      if (button.dataset.control === "CANCELLED" && !window.confirm("Cancel this execution?")) return;
      try {
        detail = await api("PATCH", base, {status: button.dataset.control});
        render();
      } catch (e) {
        box.textContent = e.message;
      }
    });
  }

  render();
  loadEvents(true).then(() => openStream(base + "/stream", (msg) => {
    if (msg.type === "event") {
      if (!seenEvents.has(msg.event_id) && (!typeSelect.value || typeSelect.value === msg.event_type)) {
        seenEvents.add(msg.event_id);
        tbody.prepend(eventRow(msg));
      }
      scheduleRefresh();
    } else if (msg.type === "execution_update") {
      renderSummary({...detail, ...msg});
      scheduleRefresh();
    }
  }));
}

/* ---------- Charts: inline SVG, no library ---------- */

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  for (const c of children) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/* A sparkline of `values` (oldest first) filling the svg's viewBox; the scale starts at 0. */
function sparkline(svg, values) {
  const [, , w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : 0;
  const pts = values.map((v, i) => [i * step, h - 2 - (v / max) * (h - 4)]);
  const line = pts.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ");
  const children = [svgEl("polyline", {points: line, class: "spark-line"})];
  if (pts.length) {
    const [x, y] = pts[pts.length - 1];
    children.push(svgEl("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: "spark-dot"}));
  }
  svg.replaceChildren(...children);
  svg.dataset.points = String(values.length);
  svg.dataset.max = String(Math.max(0, ...values));
}

/* ---------- Ops view ---------- */

const OPS_POLL_MS = 2000;
const OPS_HISTORY = 90;  // points per chart: three minutes at one read every two seconds

function initOpsPage() {
  const history = new Map();  // series name -> values, oldest first
  let previous = null;

  function push(name, value) {
    const values = history.get(name) || [];
    values.push(value);
    if (values.length > OPS_HISTORY) values.shift();
    history.set(name, values);
    return values;
  }

  function fmtRate(v) {
    return v >= 100 ? Math.round(v).toString() : v.toFixed(1);
  }

  function metric(name, shown, value) {
    document.getElementById("v-" + name).textContent = shown;
    sparkline(document.querySelector('[data-metric="' + name + '"] svg'), push(name, value));
  }

  /* Rows keyed by `key`, each with a sparkline of its own history. */
  function tableRows(tbody, items, key, cells, value) {
    tbody.replaceChildren(...items.map((item) => {
      const svg = svgEl("svg", {class: "spark small", viewBox: "0 0 120 20", "aria-hidden": "true"});
      sparkline(svg, push(key + ":" + item[key], value(item)));
      return el("tr", {dataset: {[key]: item[key]}}, ...cells(item).map((c) => el("td", {}, c)), el("td", {}, svg));
    }));
  }

  function paint(s) {
    if (previous) {
      const dt = Math.max(0.001, s.time - previous.time);
      // A counter that went down is a restart: count from zero rather than show a negative rate.
      const rate = (k) => Math.max(0, s.totals[k] - previous.totals[k]) / dt;
      metric("accepted", fmtRate(rate("accepted")), rate("accepted"));
      metric("applied", fmtRate(rate("applied")), rate("applied"));
    }
    previous = s;
    const backlog = s.shards.reduce((n, sh) => n + sh.backlog, 0);
    metric("backlog", String(backlog), backlog);
    metric("dead_letters", String(s.dead_letters), s.dead_letters);
    metric("agents", s.agents.online + " / " + s.agents.total, s.agents.online);
    metric("workers", String(s.workers_alive), s.workers_alive);
    tableRows(document.querySelector("#shards tbody"), s.shards, "shard",
      (sh) => [String(sh.shard), String(sh.backlog), sh.backlog ? fmtDuration(
        new Date(Date.now() - sh.oldest_age_seconds * 1000).toISOString(), null) : "—"],
      (sh) => sh.backlog);
    const states = Object.entries(s.executions).sort().map(([state, n]) => ({state, n}));
    tableRows(document.querySelector("#states tbody"), states, "state",
      (x) => [statusBadge(x.state), String(x.n)], (x) => x.n);
  }

  async function readiness() {
    const resp = await fetch("/readyz", {credentials: "same-origin"});
    const body = await resp.json();
    const badge = document.getElementById("ready-status");
    badge.textContent = body.status;
    badge.className = "status ready-" + body.status;
    document.getElementById("ready-checks").replaceChildren(...Object.entries(body.checks).map(([name, c]) =>
      el("li", {class: "check check-" + c.status, dataset: {check: name}},
        el("strong", {}, name), " ", el("span", {class: "chip"}, c.status), " ", c.reason)));
  }

  async function tick() {
    try {
      paint(await api("GET", "/api/ops/summary"));
      await readiness();
      setLive("live");
    } catch (e) {
      setLive("offline");
    }
    setTimeout(tick, OPS_POLL_MS);
  }
  tick();
}

/* ---------- Execution timeline (Gantt) ---------- */

const GANTT = {width: 1000, label: 230, row: 22, bar: 12, top: 22};

function ganttBounds(t) {
  const times = [t.started_at, t.created_at];
  for (const s of t.subtasks) {
    for (const a of s.attempts) times.push(a.started_at, a.ended_at);
    if (s.not_before) times.push(s.not_before);
  }
  const ms = times.filter(Boolean).map((x) => new Date(x).getTime());
  const start = Math.min(...ms);
  const end = t.completed_at ? Math.max(...ms) : Math.max(Date.now(), ...ms);
  return [start, Math.max(end, start + 1000)];
}

/* One row per subtask: waits (before its first attempt, between attempts, until a retry's not_before)
   as thin hatched bars, attempts as bars coloured by how they ended, numbered when there are several. */
function renderTimeline(box, t) {
  if (!t.subtasks.length) {
    box.replaceChildren(el("p", {class: "muted"}, "No subtasks."));
    return;
  }
  const [t0, t1] = ganttBounds(t);
  const span = GANTT.width - GANTT.label - 10;
  const x = (iso) => GANTT.label + ((iso ? new Date(iso).getTime() : Date.now()) - t0) / (t1 - t0) * span;
  const height = GANTT.top + t.subtasks.length * GANTT.row + 4;
  const nodes = [
    svgEl("text", {x: GANTT.label, y: 12, class: "gantt-axis"}, fmtTime(new Date(t0).toISOString())),
    svgEl("text", {x: GANTT.width - 10, y: 12, class: "gantt-axis", "text-anchor": "end"},
      t.completed_at ? fmtTime(new Date(t1).toISOString()) : "now"),
  ];
  const origin = t.started_at || t.created_at;
  t.subtasks.forEach((s, i) => {
    const y = GANTT.top + i * GANTT.row;
    const mid = y + GANTT.row / 2;
    const row = svgEl("g", {class: "gantt-row", "data-subtask-id": s.subtask_id, "data-attempts": s.attempts.length});
    row.append(svgEl("text", {x: 4, y: mid + 4, class: "gantt-label"},
      s.title.length > 30 ? s.title.slice(0, 29) + "…" : s.title));
    let waitFrom = origin;
    s.attempts.forEach((a, n) => {
      if (waitFrom && a.started_at && new Date(a.started_at) > new Date(waitFrom)) {
        row.append(svgEl("rect", {x: x(waitFrom), y: mid - 2, width: Math.max(1, x(a.started_at) - x(waitFrom)),
          height: 4, class: "gantt-wait"}, svgEl("title", {}, "waiting " + fmtDuration(waitFrom, a.started_at))));
      }
      const outcome = a.outcome || "running";
      const x0 = x(a.started_at), x1 = x(a.ended_at);
      row.append(svgEl("rect", {x: x0, y: mid - GANTT.bar / 2, width: Math.max(3, x1 - x0), height: GANTT.bar,
        rx: 2, class: "gantt-attempt gantt-" + outcome},
        svgEl("title", {}, "attempt " + (n + 1) + ": " + outcome + " · " + fmtDuration(a.started_at, a.ended_at))));
      if (s.attempts.length > 1) {
        row.append(svgEl("text", {x: x0 + 2, y: mid - GANTT.bar / 2 - 1, class: "gantt-n"}, String(n + 1)));
      }
      waitFrom = a.ended_at;
    });
    if (s.status === "QUEUED" && s.not_before && waitFrom) {
      row.append(svgEl("rect", {x: x(waitFrom), y: mid - 2, width: Math.max(1, x(s.not_before) - x(waitFrom)),
        height: 4, class: "gantt-wait gantt-backoff"}, svgEl("title", {}, "retry not before " + fmtTime(s.not_before))));
    }
    row.append(svgEl("text", {x: GANTT.label - 6, y: mid + 4, "text-anchor": "end", class: "gantt-tries"},
      s.attempt > 1 ? "×" + s.attempt : ""));
    nodes.push(row);
  });
  box.replaceChildren(svgEl("svg", {viewBox: "0 0 " + GANTT.width + " " + height, class: "gantt",
    role: "img", "aria-label": "Timeline of subtasks"}, ...nodes));
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "executions") initExecutionsPage();
  else if (page === "execution") initExecutionPage();
  else if (page === "ops") initOpsPage();
  else if (page === "agents") {
    for (const t of document.querySelectorAll("time[datetime]")) if (t.dateTime) t.textContent = fmtTime(t.dateTime);
  }
});
