// Tidings ops page (/admin): polls the HTTP API once a second, nothing else.
//   GET /api/nodes        the live nodes and their numbers (rates are computed here from counter deltas)
//   GET /api/jobs         queue depth across the cluster;  GET /api/jobs/dead  the newest dead letters
//   POST /api/users/{user}/disconnect
// The API key is asked for only when the API answers 401 (dev mode without keys is open), and is
// kept in this tab's sessionStorage.

const KEY_STORAGE = "tidings.admin.apiKey";
const POLL_MS = 1000;
const HISTORY = 60; // chart points (seconds)
const JOB_FIELDS = ["pending", "running", "delayed", "done", "failed", "dead"];

const $ = (selector) => document.querySelector(selector);
const RATES = ["published", "publications", "deliveries"]; // counters shown per second
const previous = new Map(); // incarnation -> the node's last snapshot, with its rates
const history = []; // {published, deliveries} per poll, cluster-wide, oldest first
let timer = null;
let polls = 0; // answered polls, on <body data-polls> (tests wait on it)

class Unauthorized extends Error {}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

function setStatus(text, state = "ok") {
  const status = $("#status");
  status.textContent = text;
  status.dataset.state = state;
}

function cell(text, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (title) td.title = title;
  return td;
}

function formatRate(value) {
  if (value === null) return "–";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function formatUptime(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// Per-second rates of a node's counters since its previous snapshot; the last known rate when the
// snapshot has not changed yet (the heartbeat writes it once a second, we poll once a second).
function ratesOf(node) {
  const before = previous.get(node.incarnation);
  let rates = before ? before.rates : Object.fromEntries(RATES.map((name) => [name, null]));
  if (before && node.updated > before.updated) {
    const seconds = node.updated - before.updated;
    rates = Object.fromEntries(RATES.map((name) => [name, Math.max(0, node[name] - before[name]) / seconds]));
  }
  if (!before || node.updated > before.updated) previous.set(node.incarnation, { ...node, rates });
  return rates;
}

function renderNodes(listing) {
  const body = $("#nodes tbody");
  const rows = [];
  const totals = { published: 0, deliveries: 0 };
  const seen = new Set();
  for (const node of listing.nodes) {
    seen.add(node.incarnation);
    const rates = ratesOf(node);
    totals.published += rates.published || 0;
    totals.deliveries += rates.deliveries || 0;
    const tr = document.createElement("tr");
    tr.dataset.node = node.node;
    tr.dataset.incarnation = node.incarnation;
    const name = cell(node.node, node.incarnation);
    if (node.node === listing.node) name.append(" ", Object.assign(document.createElement("small"), { textContent: "(this page)" }));
    tr.append(
      name,
      cell(String(node.connections)),
      cell(String(node.channels)),
      cell(String(node.subscriptions)),
      cell(formatRate(rates.published)),
      cell(formatRate(rates.publications)),
      cell(formatRate(rates.deliveries)),
      cell(String(node.slow_disconnects)),
      cell(formatUptime(listing.time - node.started)),
    );
    rows.push(tr);
  }
  for (const incarnation of [...previous.keys()]) if (!seen.has(incarnation)) previous.delete(incarnation);
  body.replaceChildren(...rows);
  $("#node-count").textContent = `(${listing.nodes.length} alive)`;
  return totals;
}

function renderChart(svg, values) {
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...values);
  const step = 300 / (HISTORY - 1);
  const offset = HISTORY - values.length;
  const points = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(78 - (v / max) * 70).toFixed(1)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "3");
  label.setAttribute("y", "9");
  label.textContent = `max ${formatRate(max)}`;
  svg.replaceChildren(line, label);
  svg.dataset.points = String(values.length);
  svg.dataset.max = String(Math.max(0, ...values));
}

function renderCharts(totals) {
  history.push(totals);
  if (history.length > HISTORY) history.shift();
  renderChart($("#chart-publications"), history.map((h) => h.published));
  renderChart($("#chart-deliveries"), history.map((h) => h.deliveries));
  $("#pub-now").textContent = formatRate(totals.published);
  $("#del-now").textContent = formatRate(totals.deliveries);
}

function renderJobs(counts, dead) {
  const items = JOB_FIELDS.map((name) => {
    const group = document.createElement("div");
    const dt = Object.assign(document.createElement("dt"), { textContent: name });
    const dd = Object.assign(document.createElement("dd"), { textContent: String(counts[name] ?? "–") });
    dd.dataset.name = name;
    if (name === "dead" && counts.dead > 0) dd.classList.add("bad");
    group.append(dt, dd);
    return group;
  });
  $("#jobs").replaceChildren(...items);
  const rows = dead.dead.slice(0, 10).map((job) => {
    const tr = document.createElement("tr");
    tr.append(cell(job.id), cell(job.kind), cell(String(job.attempts)), cell(job.error || ""));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("none");
    td.colSpan = 4;
    tr.append(td);
    rows.push(tr);
  }
  $("#dead tbody").replaceChildren(...rows);
}

async function poll() {
  timer = null;
  try {
    const [listing, counts, dead] = await Promise.all([api("/api/nodes"), api("/api/jobs"), api("/api/jobs/dead")]);
    $("#key-form").hidden = true;
    $("#dashboard").hidden = false;
    $("#forget-key").hidden = !apiKey();
    renderCharts(renderNodes(listing));
    renderJobs(counts, dead);
    setStatus(`via ${listing.node} · ${new Date(listing.time * 1000).toLocaleTimeString()}`);
    document.body.dataset.polls = String(++polls);
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForKey(apiKey() ? "That API key was refused." : "");
      return; // polling resumes once a key is entered
    }
    setStatus(`cannot reach the API: ${error.message}`, "error");
  }
  timer = setTimeout(poll, POLL_MS);
}

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  $("#dashboard").hidden = true;
  $("#forget-key").hidden = true;
  $("#key-form").hidden = false;
  $("#key-error").textContent = message;
  setStatus("API key needed");
  $("#key-input").focus();
}

function restart() {
  if (timer !== null) clearTimeout(timer);
  poll();
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
  $("#key-input").value = "";
  restart();
});

$("#forget-key").addEventListener("click", () => {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  askForKey("");
});

$("#disconnect-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("#disconnect-user").value.trim();
  const result = $("#disconnect-result");
  try {
    await api(`/api/users/${encodeURIComponent(user)}/disconnect`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    result.textContent = `Disconnected ${user} on every node.`;
    result.className = "";
  } catch (error) {
    result.textContent = error instanceof Unauthorized ? "API key refused." : `Failed: ${error.message}`;
    result.className = "error";
  }
});

poll();
