// trainpilot dashboard: run list, live charts (SSE, resumable), control, CV panels, insights, ask.
// Plain JS and the vendored uPlot: no build step. Every number comes from the server's API.
"use strict";

const ACTIVE = new Set(["created", "running", "paused"]);
const SPLITS = ["train", "training", "val", "validation", "eval", "test"];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
const $ = (id) => document.getElementById(id);

const state = {
  runs: [], selected: null, run: null, charts: new Map(), series: new Map(),
  streams: [], compare: new Set(), token: localStorage.getItem("trainpilot-token") || "",
  pending: new Map(), acked: new Set(), generation: 0,
};

// -- HTTP ---------------------------------------------------------------------------------------

// A token server: open the dashboard as http://host:port/#token=<token> once (a fragment never
// reaches the server or its logs), or answer the prompt; the token stays in this browser.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  state.token = fragment.get("token"); localStorage.setItem("trainpilot-token", state.token);
  fragment.delete("token"); // out of the address bar, the history and screenshots
  history.replaceState(null, "", location.pathname + location.search + (fragment.size ? `#${fragment}` : ""));
}
let asking = null;
function askToken(why) {
  // One prompt however many requests were refused at once.
  asking = asking || Promise.resolve().then(() => {
    const token = prompt(why);
    if (token) { state.token = token; localStorage.setItem("trainpilot-token", token); }
    setTimeout(() => { asking = null; }, 0);
    return Boolean(token);
  });
  return asking;
}

// fetch() with the token, asking for one once when the server refuses: the response, body unread.
async function request(path, options = {}, retried = false) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && !retried && await askToken("This trainpilot server needs a token. Token:")) {
    return request(path, options, true);
  }
  return response;
}

async function failure(response) {
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  const error = new Error(body?.error?.message || `HTTP ${response.status}`);
  error.status = response.status;
  return error;
}

async function api(path, options = {}) {
  const response = await request(path, options);
  if (!response.ok) throw await failure(response);
  return response.headers.get("content-type")?.includes("json") ? response.json() : null;
}

// -- metric grouping: train/loss and val/loss share the chart "loss" ----------------------------

function groupOf(key) {
  const parts = key.split("/");
  if (parts.length > 1 && SPLITS.includes(parts[0].toLowerCase())) return parts.slice(1).join("/");
  if (parts.length > 1 && SPLITS.includes(parts[parts.length - 1].toLowerCase())) return parts.slice(0, -1).join("/");
  if (key.startsWith("grad_norm/layer/")) return "grad_norm/layer";
  if (key.startsWith("grad_norm")) return "grad_norm";
  return key;
}

function isPerClass(key) { return /^val(idation)?\/acc\/.+/.test(key); }

// -- run list -------------------------------------------------------------------------------------

async function refreshRuns() {
  try {
    state.runs = (await api("/api/runs?limit=200")).runs;
  } catch (e) { return; }
  renderRuns();
  if (!state.selected && state.runs.length) {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("run");
    const pick = state.runs.find((r) => r.id === fromHash) || state.runs.find((r) => ACTIVE.has(r.status)) || state.runs[0];
    selectRun(pick.id);
  }
  const current = state.runs.find((r) => r.id === state.selected);
  if (current) updateRunHead(current);
}

function duration(run) {
  const seconds = Math.max(0, run.updated_at - run.created_at);
  return seconds < 120 ? `${seconds.toFixed(0)} s` : seconds < 7200 ? `${(seconds / 60).toFixed(1)} min` : `${(seconds / 3600).toFixed(1)} h`;
}

function renderRuns() {
  const query = $("search").value.trim().toLowerCase();
  const list = $("runs");
  list.replaceChildren();
  for (const run of state.runs) {
    const text = `${run.name} ${run.project} ${run.id} ${run.status}`.toLowerCase();
    if (query && !text.includes(query)) continue;
    const li = document.createElement("li");
    li.dataset.run = run.id;
    if (run.id === state.selected) li.classList.add("selected");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.compare.has(run.id);
    box.title = "select for compare";
    box.addEventListener("click", (event) => {
      event.stopPropagation();
      box.checked ? state.compare.add(run.id) : state.compare.delete(run.id);
      $("compare-btn").disabled = state.compare.size < 2;
    });
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = run.name;
    const meta = document.createElement("span");
    meta.className = "meta";
    const started = new Date(run.created_at * 1000).toLocaleString();
    meta.textContent = `${run.project} · ${run.status} · step ${run.last_step ?? "–"} · ${started} · ${duration(run)}`;
    li.append(box, name, meta);
    li.addEventListener("click", () => selectRun(run.id));
    list.append(li);
  }
  $("empty").hidden = state.runs.length > 0;
}

// -- one run --------------------------------------------------------------------------------------

function closeStreams() {
  for (const stream of state.streams.filter(Boolean)) stream.close();
  state.streams = [];
  state.generation = (state.generation || 0) + 1; // streams still being opened see it and give up
}

async function selectRun(runId) {
  closeStreams();
  if (runId !== state.selected) resetAdvisor(); // an answer is about the run it was asked of
  state.selected = runId;
  history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
  $("compareview").hidden = true;
  $("runview").hidden = false;
  renderRuns();
  for (const chart of state.charts.values()) chart.plot.destroy();
  state.charts.clear();
  state.series.clear();
  $("charts").replaceChildren();
  for (const id of ["confusion", "perclass", "samples"]) $(id).textContent = "none yet";
  $("insights").replaceChildren(item("none yet"));
  let run;
  try { run = await api(`/api/runs/${encodeURIComponent(runId)}`); } catch (e) { return; }
  if (state.selected !== runId) return;
  state.run = run;
  updateRunHead(run);
  renderConfig(run.config);
  const cursor = run.last_event_id ?? 0;
  await loadHistory(runId);
  renderPerClass(run.metrics);
  openStreams(runId, cursor);
}

function updateRunHead(run) {
  state.run = Object.assign(state.run || {}, run);
  $("run-title").textContent = `${run.name} (${run.id})`;
  $("run-status").textContent = run.status;
  $("run-status").dataset.status = run.status;
  $("run-step").textContent = `step ${run.last_step ?? "–"} · project ${run.project}`;
  for (const button of document.querySelectorAll("#controls button")) button.disabled = !ACTIVE.has(run.status);
}

function renderConfig(config) {
  const lines = Object.entries(config || {}).map(([key, value]) => `${key} = ${typeof value === "string" ? value : JSON.stringify(value)}`);
  $("config").textContent = lines.length ? lines.join("\n") : "none logged";
}

async function loadHistory(runId, range = null) {
  const width = Math.max(300, Math.floor($("charts").clientWidth / 2));
  const params = new URLSearchParams({ run_id: runId, max_points: String(range ? 5000 : width) });
  if (range) { params.set("start_step", String(Math.max(0, Math.floor(range[0])))); params.set("end_step", String(Math.ceil(range[1]))); }
  let body;
  try { body = await api(`/api/metrics/history?${params}`); } catch (e) { return; }
  if (state.selected !== runId) return;
  for (const [key, s] of Object.entries(body.series)) {
    if (isPerClass(key)) continue;
    state.series.set(key, { step: s.step.slice(), value: s.value.slice(), ts: s.ts.slice() });
  }
  redrawAll();
}

async function streamUrl(params) {
  // EventSource cannot send headers: on a token server it carries a short-lived signed read token.
  if (state.token) {
    try { params.set("access_token", (await api("/api/auth/stream-token", { method: "POST" })).access_token); } catch (e) { /* shown as not live */ }
  }
  return `/api/stream/metrics?${params}`;
}

function openStreams(runId, cursor) {
  // Metrics from the cursor read before the history; the rest from the beginning (few events, and
  // the panels want their history). EventSource resumes with Last-Event-ID by itself; a stream the
  // server refused (an expired URL token) is reopened here, after the last event it delivered.
  const specs = [
    { kinds: ["metrics"], after: cursor, on: (kind, data) => onMetrics(data) },
    { kinds: ["status", "control", "insight", "media", "log"], after: 0, on: onEvent },
  ];
  state.streams = [];
  specs.forEach((spec, i) => openStream(runId, spec, i, state.generation));
  showConnection();
}

async function openStream(runId, spec, slot, generation) {
  const params = new URLSearchParams({ run_id: runId, kinds: spec.kinds.join(","), after: String(spec.after) });
  const url = await streamUrl(params);
  if (state.generation !== generation) return;
  const stream = new EventSource(url);
  state.streams[slot] = stream;
  for (const kind of spec.kinds) {
    stream.addEventListener(kind, (message) => {
      spec.after = Number(message.lastEventId) || spec.after;
      spec.on(kind, JSON.parse(message.data));
    });
  }
  stream.addEventListener("open", showConnection);
  stream.addEventListener("error", () => {
    showConnection();
    if (stream.readyState === EventSource.CLOSED && state.streams[slot] === stream) {
      setTimeout(() => { if (state.streams[slot] === stream) openStream(runId, spec, slot, generation); }, 2000);
    }
  });
  stream.addEventListener("resync", () => { stream.close(); selectRun(runId); });
  showConnection();
}

function showConnection() {
  const states = state.streams.filter(Boolean).map((s) => s.readyState);
  const label = states.length && states.every((s) => s === EventSource.OPEN) ? "live" : states.some((s) => s === EventSource.CLOSED) ? "closed" : "reconnecting";
  $("conn").dataset.state = label;
  $("conn").textContent = label === "live" ? "● live" : label === "closed" ? "○ closed" : "◌ reconnecting…";
}

let redrawQueued = false;
function onMetrics(event) {
  if (event.run_id !== state.selected) return;
  for (const [key, value] of Object.entries(event.data)) {
    if (value === null) continue;
    if (isPerClass(key)) { renderPerClass({ [key]: { value } }); continue; }
    let s = state.series.get(key);
    if (!s) { s = { step: [], value: [], ts: [] }; state.series.set(key, s); }
    const last = s.step.length ? s.step[s.step.length - 1] : -Infinity;
    if (event.step <= last) continue; // the history we loaded has it (it and the stream overlap)
    s.step.push(event.step); s.value.push(value); s.ts.push(event.ts);
  }
  if (state.run && event.step != null) { state.run.last_step = Math.max(state.run.last_step ?? 0, event.step); $("run-step").textContent = `step ${state.run.last_step} · project ${state.run.project}`; }
  if (!redrawQueued) { redrawQueued = true; requestAnimationFrame(() => { redrawQueued = false; redrawAll(); }); }
}

function onEvent(kind, event) {
  const data = event.data || {};
  if (kind === "status") updateRunHead(Object.assign({}, state.run, { status: data.status }));
  else if (kind === "control") onControl(event);
  else if (kind === "insight") addInsight(event);
  else if (kind === "media" && data.type === "confusion_matrix") renderConfusion(data);
  else if (kind === "media" && data.type === "image") addSample(event);
}

// -- charts ---------------------------------------------------------------------------------------

function smoothed(values, alpha) {
  if (!alpha) return values;
  const out = new Array(values.length);
  let acc = null;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    acc = acc === null || v === null ? v : alpha * acc + (1 - alpha) * v;
    out[i] = acc;
  }
  return out;
}

function xValues(s) {
  const mode = $("xaxis").value;
  if (mode === "step") return s.step;
  if (mode === "time") return s.ts;
  const t0 = state.run ? state.run.created_at : s.ts[0];
  return s.ts.map((t) => t - t0);
}

function alignedData(keys) {
  // One shared x array: the union of every series' x values, each series null where it has none.
  const maps = keys.map((key) => {
    const s = state.series.get(key);
    const x = xValues(s);
    const values = smoothed(s.value, Number($("smooth").value));
    const m = new Map();
    for (let i = 0; i < x.length; i++) m.set(x[i], values[i]);
    return m;
  });
  const xs = Array.from(new Set(maps.flatMap((m) => Array.from(m.keys())))).sort((a, b) => a - b);
  return [xs, ...maps.map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))];
}

const FIRST = ["loss", "acc", "accuracy", "lr", "grad_norm"];
function chartOrder(a, b) {
  const rank = (key) => {
    const group = groupOf(key);
    const first = FIRST.findIndex((name) => group === name || group.endsWith(`/${name}`) || group.startsWith(`${name}_`));
    if (first >= 0) return first;
    return group.startsWith("system/") || group === "epoch" ? 100 : 50;
  };
  return rank(a) - rank(b) || groupOf(a).localeCompare(groupOf(b)) || a.localeCompare(b);
}

function redrawAll() {
  const groups = new Map();
  for (const key of Array.from(state.series.keys()).sort(chartOrder)) {
    const group = groupOf(key);
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(key);
  }
  for (const [group, keys] of groups) drawChart(group, keys);
}

function drawChart(group, keys) {
  const data = alignedData(keys);
  const existing = state.charts.get(group);
  const log = $("logscale").checked && data.slice(1).every((col) => col.every((v) => v === null || v > 0));
  if (existing && existing.keys.join() === keys.join() && existing.log === log && existing.x === $("xaxis").value) {
    if (!existing.zoomed) existing.plot.setData(data);
    existing.holder.dataset.points = String(data[0].length);
    return;
  }
  if (existing) existing.plot.destroy();
  let holder = document.querySelector(`.chart[data-group="${CSS.escape(group)}"]`);
  if (!holder) {
    holder = document.createElement("div");
    holder.className = "chart";
    holder.dataset.group = group;
    $("charts").append(holder);
  }
  holder.replaceChildren();
  const time = $("xaxis").value === "time";
  const entry = { keys, log, x: $("xaxis").value, zoomed: false, holder };
  holder.dataset.points = String(data[0].length);
  const opts = {
    title: group, width: Math.max(380, holder.clientWidth - 8), height: 220,
    scales: { x: { time }, y: { distr: log ? 3 : 1 } },
    series: [{ label: $("xaxis").value }, ...keys.map((key, i) => ({ label: key, stroke: COLORS[i % COLORS.length], spanGaps: true, width: 1.5 }))],
    cursor: { drag: { x: true, y: false } },
    hooks: {
      setSelect: [(u) => {
        if (u.select.width < 5 || $("xaxis").value !== "step") return;
        const range = [u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x")];
        entry.zoomed = true;
        zoomTo(group, keys, range);
      }],
    },
  };
  entry.plot = new uPlot(opts, data, holder);
  holder.addEventListener("dblclick", () => { entry.zoomed = false; redrawAll(); });
  state.charts.set(group, entry);
}

async function zoomTo(group, keys, range) {
  // Full resolution for the zoomed window, straight from the store.
  const params = new URLSearchParams({ run_id: state.selected, keys: keys.join(","), max_points: "5000",
    start_step: String(Math.max(0, Math.floor(range[0]))), end_step: String(Math.ceil(range[1])) });
  let body;
  try { body = await api(`/api/metrics/history?${params}`); } catch (e) { return; }
  const entry = state.charts.get(group);
  if (!entry) return;
  const maps = keys.map((key) => new Map((body.series[key]?.step || []).map((s, i) => [s, body.series[key].value[i]])));
  const xs = Array.from(new Set(maps.flatMap((m) => Array.from(m.keys())))).sort((a, b) => a - b);
  entry.plot.setData([xs, ...maps.map((m) => smoothed(xs.map((x) => (m.has(x) ? m.get(x) : null)), Number($("smooth").value)))]);
}

// -- control ----------------------------------------------------------------------------------------

async function sendControl(action) {
  const body = { run_id: state.selected, action };
  if (action === "set_lr") {
    const value = Number($("lr-value").value);
    if (!(value > 0)) { $("ack").textContent = "enter a positive learning rate"; return; }
    body.value = value;
  }
  try {
    const reply = await api("/api/training/control", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    state.pending.set(reply.command_id, action);
    // The run can acknowledge before this reply is read: never write "requested" over its answer.
    if (!state.acked.has(reply.command_id)) $("ack").textContent = `${action}: requested (command ${reply.command_id}), waiting for the run…`;
  } catch (error) {
    if (error.status === 403 && await askToken("Control needs the write token (this one can only read). Token:")) {
      return sendControl(action);
    }
    $("ack").textContent = `${action}: ${error.message}`;
  }
}

function onControl(event) {
  const data = event.data;
  if (data.status === "requested") return;
  state.acked.add(data.command_id);
  const action = data.action || state.pending.get(data.command_id);
  const detail = data.reason ? ` — ${data.reason}` : "";
  $("ack").textContent = `${action}: ${data.status} at step ${data.step ?? "?"} (command ${data.command_id})${detail}`;
  $("ack").dataset.status = data.status;
}

// -- CV panels and insights ---------------------------------------------------------------------

function renderConfusion(data) {
  const max = Math.max(1, ...data.matrix.flat());
  const table = document.createElement("table");
  table.className = "cm";
  const head = table.insertRow();
  head.insertCell().textContent = "true \\ pred";
  for (const name of data.classes) { const th = document.createElement("th"); th.textContent = name; head.append(th); }
  data.matrix.forEach((row, i) => {
    const tr = table.insertRow();
    const th = document.createElement("th"); th.textContent = data.classes[i]; tr.append(th);
    row.forEach((count, j) => {
      const cell = tr.insertCell();
      cell.textContent = count;
      const strength = count / max;
      cell.style.background = i === j ? `rgba(37,99,235,${0.1 + 0.9 * strength})` : `rgba(220,38,38,${strength})`;
      cell.style.color = strength > 0.55 ? "#fff" : "#111";
    });
  });
  $("confusion").replaceChildren(table);
}

function renderPerClass(metrics) {
  const entries = Object.entries(metrics || {}).filter(([key]) => isPerClass(key));
  if (!entries.length) return;
  const panel = $("perclass");
  if (panel.textContent === "none yet") panel.replaceChildren();
  for (const [key, point] of entries) {
    const name = key.split("/").slice(2).join("/");
    let row = panel.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (!row) {
      row = document.createElement("div"); row.className = "bar"; row.dataset.key = key;
      row.append(document.createElement("span"), document.createElement("span"), document.createElement("span"));
      row.children[1].className = "fill";
      panel.append(row);
    }
    row.children[0].textContent = name;
    row.children[1].style.width = `${(100 * point.value).toFixed(1)}%`;
    row.children[2].textContent = `${(100 * point.value).toFixed(1)} %`;
  }
}

function addSample(event) {
  // Only the server's own stored images: an ingested media event must not make the page fetch elsewhere.
  if (typeof event.data.url !== "string" || !event.data.url.startsWith("/api/media/")) return;
  const panel = $("samples");
  if (panel.textContent === "none yet") panel.replaceChildren();
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = event.data.url;
  img.alt = event.data.name;
  const caption = document.createElement("figcaption");
  caption.textContent = `step ${event.step ?? "?"}: ${event.data.caption || event.data.name}`;
  figure.append(img, caption);
  panel.prepend(figure);
  while (panel.children.length > 4) panel.lastChild.remove();
}

function item(text, className) {
  const li = document.createElement("li");
  li.textContent = text;
  if (className) li.className = className;
  return li;
}

function addInsight(event) {
  const list = $("insights");
  if (list.firstChild?.textContent === "none yet") list.replaceChildren();
  const d = event.data;
  list.prepend(item(`[${d.severity}] ${d.kind} at step ${d.step ?? event.step ?? "?"}: ${d.message || ""}${d.suggestion ? " — " + d.suggestion : ""}`, d.severity));
}

// -- ask the advisor ------------------------------------------------------------------------------
// POST /api/runs/{id}/ask answers with an SSE stream: `token`s of the answer, an optional `note` (a
// critical finding the answer contradicted or left out), then `done` (who answered, the findings it
// was grounded on) or `error`. EventSource cannot POST, so the stream is read from fetch().

let advisorAsk = null; // { controller, runId } while an answer streams

async function* serverEvents(body) {
  // The SSE wire format: fields up to a blank line make one event; ":" lines are comments.
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", name = "message", data = [];
  const line = (text) => {
    if (text === "") {
      const event = data.length ? { name, data: data.join("\n") } : null;
      name = "message"; data = [];
      return event;
    }
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    const value = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
    return null; // comments (":" first) and other fields
  };
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    // A "\r" that ends a chunk may be half of a "\r\n": it waits in the buffer for the next chunk.
    const lines = (buffer + value).split(/\r\n|\r(?!$)|\n/);
    buffer = lines.pop();
    for (const text of lines) { const event = line(text); if (event) yield event; }
  }
  // A last event the server did not end with a blank line.
  const last = line(buffer.replace(/\r$/, "")) || line("");
  if (last) yield last;
}

function resetAdvisor() {
  if (advisorAsk) advisorAsk.controller.abort();
  advisorAsk = null;
  $("advisor-answer").replaceChildren();
  for (const id of ["advisor-refusal", "advisor-note", "advisor-grounds"]) $(id).hidden = true;
  $("advisor-findings").replaceChildren();
  advisorStatus("");
  advisorBusy(false);
}

function advisorBusy(busy) {
  $("advisor-question").readOnly = busy; // not disabled: it keeps the keyboard's focus
  $("advisor-ask").disabled = busy;
  $("advisor-stop").hidden = !busy;
  $("advisor-answer").setAttribute("aria-busy", String(busy)); // read out once, when complete
}

function advisorStatus(text, error = false) {
  $("advisor-status").textContent = text;
  $("advisor-status").classList.toggle("error", error);
}

function advisorDone(data) {
  const findings = Array.isArray(data.findings) ? data.findings : null;
  if (findings) {
    $("advisor-findings").replaceChildren(...(findings.length ? findings.map((f) =>
      item(`[${f.severity ?? "?"}] ${f.kind ?? "?"} at step ${f.step ?? "?"}: ${f.message ?? ""}`, f.severity)) : [item("none")]));
    $("advisor-grounds").hidden = false;
  }
  if (data.source === "rules") {
    $("advisor-refusal").textContent = `No model answered: ${data.reason ?? "no LLM is configured"}. The detectors' rules answered instead.`;
    $("advisor-refusal").hidden = false;
    advisorStatus("answered by the detectors' rules, not a model");
  } else {
    advisorStatus(`answered by ${data.model || "the model"}`);
  }
}

function advisorNote(data) {
  const kinds = Array.isArray(data.findings) && data.findings.length ? ` (${data.findings.join(", ")})` : "";
  $("advisor-note").textContent = `Checked against the detectors${kinds}: ${data.text ?? ""}`;
  $("advisor-note").hidden = false;
}

async function askAdvisor() {
  const question = $("advisor-question").value.trim();
  const runId = state.selected;
  if (!runId || advisorAsk) return;
  if (!question) { advisorStatus("type a question first", true); return; }
  resetAdvisor();
  const ask = advisorAsk = { controller: new AbortController(), runId };
  advisorBusy(true);
  advisorStatus("asking…");
  let ended = false;
  try {
    const response = await request(`/api/runs/${encodeURIComponent(runId)}/ask`, {
      method: "POST", signal: ask.controller.signal, body: JSON.stringify({ question }),
      headers: { "content-type": "application/json", accept: "text/event-stream" },
    });
    if (!response.ok) throw await failure(response);
    advisorStatus("answering…");
    for await (const event of serverEvents(response.body)) {
      let data;
      try { data = JSON.parse(event.data); } catch (e) { continue; } // not ours to show
      if (event.name === "token") $("advisor-answer").append(String(data.text ?? ""));
      else if (event.name === "note") advisorNote(data);
      else if (event.name === "done") { advisorDone(data); ended = true; }
      else if (event.name === "error") { advisorStatus(`error: ${data.message ?? "the advisor failed"}`, true); ended = true; }
    }
    if (!ended) advisorStatus("the answer ended early: the connection closed before it was done", true);
  } catch (error) {
    if (advisorAsk !== ask) return; // reset meanwhile (another run): its panel is not ours
    advisorStatus(error.name === "AbortError" ? "stopped" : `error: ${error.message}`, error.name !== "AbortError");
  } finally {
    if (advisorAsk === ask) { advisorAsk = null; advisorBusy(false); }
  }
}

// -- compare ----------------------------------------------------------------------------------------

async function openCompare() {
  closeStreams();
  $("runview").hidden = true;
  $("compareview").hidden = false;
  const ids = Array.from(state.compare);
  const keys = new Set();
  const bodies = await Promise.all(ids.map((id) => api(`/api/metrics/history?run_id=${encodeURIComponent(id)}&max_points=1000`).catch(() => null)));
  bodies.forEach((b) => b && Object.keys(b.series).forEach((k) => keys.add(k)));
  const select = $("compare-key");
  const previous = select.value;
  select.replaceChildren(...Array.from(keys).sort().map((k) => { const o = document.createElement("option"); o.value = o.textContent = k; return o; }));
  if (keys.has(previous)) select.value = previous;
  else if (keys.has("train/loss")) select.value = "train/loss";
  drawCompare(ids, bodies);
  select.onchange = () => drawCompare(ids, bodies);
}

function drawCompare(ids, bodies) {
  const key = $("compare-key").value;
  const maps = bodies.map((b) => new Map((b?.series[key]?.step || []).map((s, i) => [s, b.series[key].value[i]])));
  const xs = Array.from(new Set(maps.flatMap((m) => Array.from(m.keys())))).sort((a, b) => a - b);
  const holder = $("compare-chart");
  holder.replaceChildren();
  const names = ids.map((id) => state.runs.find((r) => r.id === id)?.name || id);
  new uPlot({ title: key, width: Math.max(500, holder.clientWidth - 8), height: 360, scales: { x: { time: false } },
    series: [{ label: "step" }, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], spanGaps: true }))] },
    [xs, ...maps.map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))], holder);
}

// -- system -----------------------------------------------------------------------------------------

async function refreshSystem() {
  try {
    const info = await api("/api/system/info");
    $("sysline").textContent = `v${info.version} · ${info.connections.sse} SSE · ${info.connections.ws} WS · CPU ${info.cpu.percent}% · RAM ${info.memory.percent}%`;
    const gpus = info.gpus.length ? info.gpus.map((g) => `${g.name} ${g.utilization_percent}% ${g.memory_used_mib}/${g.memory_total_mib} MiB`).join("; ") : "none";
    $("system").textContent = `host ${info.host.hostname} (${info.host.platform}, Python ${info.host.python})\n` +
      `store ${info.backends.store} · broker ${info.backends.broker} · uptime ${info.uptime_s.toFixed(0)} s\n` +
      `CPU ${info.cpu.count} cores, ${info.cpu.percent}% (server process ${info.cpu.process_percent}%)\n` +
      `RAM ${(info.memory.available_bytes / 2 ** 30).toFixed(1)} GiB free of ${(info.memory.total_bytes / 2 ** 30).toFixed(1)} GiB; server RSS ${(info.memory.process_rss_bytes / 2 ** 20).toFixed(0)} MiB\n` +
      `GPU ${gpus}\nlive connections: ${info.connections.sse} SSE, ${info.connections.ws} WebSocket\n` +
      `advisor: ${advisorText(info.llm)}`;
    $("alerts").textContent = alertsText(info.alerts);
  } catch (e) { $("sysline").textContent = "server unreachable"; }
}

// Where answers come from: a local model (and whether it is loaded), an endpoint, or the rules alone.
function advisorText(llm) {
  if (!llm || !llm.configured) return "the detectors' rules only (trainpilot serve --llm-model PATH.gguf)";
  if (llm.source === "local") return `local model ${llm.model} (${llm.state}; ${llm.threads} threads)`;
  return `${llm.model} at ${llm.url}`;
}

// Webhooks come redacted (scheme and host: a webhook's path is its secret), and as text like the rest.
function alertsText(alerts) {
  if (!alerts || !alerts.configured) return "no webhooks (trainpilot serve --alert-webhook URL)";
  const rate = alerts.rate_limit;
  const hooks = alerts.webhooks.map((w) => `${w.url} (${w.format}): ${w.sent} sent, ${w.failed} failed, ` +
    `${w.dropped} dropped, ${w.pending} pending${w.last_error ? ` · last error ${w.last_error}` : ""}`);
  return `${alerts.severity} findings and above, and runs that end failed, stopped or lost; ` +
    `${rate.burst} at once, then one per ${rate.refill_s} s per webhook\n${hooks.join("\n")}`;
}

// -- wiring -----------------------------------------------------------------------------------------

$("search").addEventListener("input", renderRuns);
for (const button of document.querySelectorAll("#controls button")) button.addEventListener("click", () => sendControl(button.dataset.action));
for (const id of ["smooth", "logscale", "xaxis"]) $(id).addEventListener("input", () => { for (const c of state.charts.values()) c.zoomed = false; redrawAll(); });
$("compare-btn").addEventListener("click", openCompare);
$("advisor-form").addEventListener("submit", (event) => { event.preventDefault(); askAdvisor(); });
$("advisor-question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); askAdvisor(); }
});
$("advisor-stop").addEventListener("click", () => advisorAsk?.controller.abort());
// A local model reads the run while the question is typed, so its answer starts within a second or two.
let advisorPrepared = null; // the run it was last asked to read
$("advisor-question").addEventListener("focus", () => {
  const runId = state.selected;
  if (!runId || advisorPrepared === runId) return;
  advisorPrepared = runId;
  request(`/api/runs/${encodeURIComponent(runId)}/ask/prepare`, {
    method: "POST", body: "{}", headers: { "content-type": "application/json" },
  }).catch(() => {});
});
$("compare-close").addEventListener("click", () => { const id = state.selected || state.runs[0]?.id; if (id) selectRun(id); });
refreshRuns();
refreshSystem();
setInterval(refreshRuns, 3000);
setInterval(refreshSystem, 5000);
