// The llama-sidecar dashboard: lives on /ws/events (a snapshot, then every pool
// event) and /ws/logs/{key} for the selected sidecar. No build step, no network
// beyond the daemon itself; charts by uPlot (vendored, see vendor/README.md).

const MAX_LOG_LINES = 2000;
const MAX_ACTIVITY = 300; // requests kept in the Activity view
let HISTORY_S = 600; // what the charts show; the daemon keeps (and says) as much
const state = {
  sidecars: new Map(), routes: [], pool: {}, memory: { devices: [] },
  selected: null, logSocket: null, activity: 0,
};

const $ = (id) => document.getElementById(id);
// With admin keys set, open the dashboard as /?key=KEY: the key goes along with every call.
const KEY = new URLSearchParams(location.search).get("key");
const withKey = (path) => (KEY ? `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(KEY)}` : path);
const wsUrl = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${withKey(path)}`;
const authHeaders = () => (KEY ? { authorization: `Bearer ${KEY}` } : {});

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value; // no layout work for what did not change
}

function bytes(value) {
  if (value == null) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let size = value, unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit++; }
  return `${size.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

const mib = (value) => (value >= 1024 ? `${(value / 1024).toFixed(1)} GiB` : `${value} MiB`);
const ms = (seconds) => (seconds == null ? "–" : seconds < 10 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(1)} s`);
const rate = (value) => (value == null ? "–" : value.toFixed(1));
const count = (value) => (value == null ? "–" : String(value));

function ago(timestamp) {
  if (!timestamp) return "–";
  const seconds = Math.max(0, Math.floor(Date.now() / 1000 - timestamp));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

// A stable colour per child, the same in its memory share and its chart series.
const hue = (key) => [...key].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);
const colour = (key) => `hsl(${hue(key)} 60% 50%)`;
const label = (s) => `${s.model} ${s.key.slice(0, 8)}`;

async function act(method, path) {
  const response = await fetch(path, { method, headers: authHeaders() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    alert(body?.error?.message ?? `${method} ${path}: HTTP ${response.status}`);
  }
}

// -- views -------------------------------------------------------------------------

function showView() {
  const name = (location.hash || "#overview").slice(1);
  const known = ["overview", "activity", "charts", "playground"].includes(name) ? name : "overview";
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${known}`;
  for (const link of document.querySelectorAll("#views a")) {
    link.classList.toggle("current", link.dataset.view === known);
  }
  if (known === "charts") charts.draw(true);
}

// -- the overview: rows are kept by key and updated in place -----------------------

function renderSummary() {
  const sidecars = [...state.sidecars.values()];
  const cap = state.pool.max_sidecars; // 0: no count limit, memory alone decides
  setText($("sum-live"), cap ? `${sidecars.length}/${cap}` : `${sidecars.length}`);
  setText($("sum-memory"), bytes(state.pool.total_rss_bytes));
  setText($("sum-inflight"), sidecars.reduce((sum, s) => sum + (s.in_flight ?? 0), 0));
  setText($("sum-evictions"), state.pool.evictions ?? 0);
}

const SIDECAR_FIELDS = ["model", "agents", "key", "port", "pid", "state", "up", "last_used", "in_flight", "restarts", "memory", "cpu", "kv"];
const NUMERIC = new Set(["in_flight", "restarts", "memory", "cpu", "kv"]);

// A key's saved KV cache (kept across a swap): its tokens and size, and a title that says what and when.
function kvCache(kv) {
  if (kv?.unhelpful) return { text: "no help", title: `not saved: ${kv.unhelpful}` };
  const slots = kv?.slots ?? [];
  if (!slots.length) return { text: "–", title: "no KV cache saved for this key" };
  const tokens = slots.reduce((sum, slot) => sum + slot.tokens, 0);
  const size = slots.reduce((sum, slot) => sum + slot.bytes, 0);
  const made = slots.map((slot) => `slot ${slot.slot}: ${slot.tokens} tokens, saved ${ago(slot.made_at)} ago`);
  return { text: `${tokens} tok · ${bytes(size)}`, title: `saved KV cache, restored when it starts (${made.join("; ")})` };
}

function sidecarRow(key) {
  const stop = (e) => { e.stopPropagation(); act("DELETE", `/api/sidecars/${key}`); };
  const restart = (e) => { e.stopPropagation(); act("POST", `/api/sidecars/${key}/restart`); };
  const cells = SIDECAR_FIELDS.map((field) => el("td", { "data-field": field, class: NUMERIC.has(field) ? "num" : field === "key" ? "key" : null }));
  cells[SIDECAR_FIELDS.indexOf("state")].append(el("span", { class: "state" }));
  return el("tr", { "data-key": key, onclick: () => select(key) },
    ...cells,
    el("td", { class: "actions" },
      el("button", { "data-action": "restart", onclick: restart }, "Restart"),
      el("button", { class: "danger", "data-action": "stop", onclick: stop }, "Stop")));
}

function updateSidecarRow(row, s) {
  const usage = s.usage ?? {};
  const values = {
    model: s.model, agents: (s.agents ?? []).join(", ") || "–", key: s.key.slice(0, 8),
    port: s.port ?? "–", pid: s.pid ?? "–", up: ago(s.started_at), last_used: ago(s.last_used),
    in_flight: s.in_flight ?? 0, restarts: s.restarts ?? 0, memory: bytes(usage.rss_bytes),
    cpu: usage.cpu_percent == null ? "–" : `${usage.cpu_percent}%`,
  };
  const kv = kvCache(s.kv_cache);
  values.kv = kv.text;
  const counted = Object.entries(s.memory?.counted_mib ?? {}).map(([device, size]) => `${device} ${mib(size)}`).join(", ");
  const devices = s.memory?.devices ?? [];
  const rssTitle = `resident memory (RSS) of this child's whole process tree, measured every 2 s` +
    (counted ? `; it counts for ${counted} against the memory budget (see Memory below)` : "") +
    (devices.length ? `; it runs on ${devices.join(", ")}` : "") +
    (s.memory?.placement ? ` (${s.memory.placement})` : "");
  for (const cell of row.children) {
    const field = cell.dataset.field;
    if (field === "memory" && cell.title !== rssTitle) cell.title = rssTitle;
    if (field === "kv" && cell.title !== kv.title) cell.title = kv.title;
    if (field === "state") {
      const badge = cell.firstElementChild;
      setText(badge, s.state);
      if (badge.className !== `state ${s.state}`) badge.className = `state ${s.state}`;
    } else if (field in values) setText(cell, values[field]);
  }
  row.classList.toggle("selected", s.key === state.selected);
}

function renderSidecars() {
  const body = $("sidecars").querySelector("tbody");
  const rows = new Map([...body.children].map((row) => [row.dataset.key, row]));
  for (const [key, row] of rows) if (!state.sidecars.has(key)) row.remove();
  for (const s of state.sidecars.values()) {
    let row = rows.get(s.key);
    if (!row) {
      row = sidecarRow(s.key);
      // Placed once, by model; an existing row is never moved (a click on it must not be lost).
      const after = [...body.children].find((other) => state.sidecars.get(other.dataset.key)?.model.localeCompare(s.model) > 0);
      body.insertBefore(row, after ?? null);
    }
    updateSidecarRow(row, s);
  }
  $("no-sidecars").hidden = state.sidecars.size > 0;
  renderSummary();
  renderMemory();
  updateRoutes();
}

function renderMemory() {
  // Budgets and totals come with the snapshot; each child's share from its latest event or stats sample.
  const sidecars = [...state.sidecars.values()];
  $("memory").replaceChildren(...state.memory.devices.map((device) => {
    const scale = Math.max(device.total_mib, device.budget_mib, 1);
    const shares = sidecars
      .map((s) => ({ sidecar: s, size: s.memory?.counted_mib?.[device.device] ?? 0 }))
      .filter((share) => share.size > 0);
    const used = shares.reduce((sum, share) => sum + share.size, 0);
    const bar = el("div", { class: "bar", role: "img", "aria-label": `${device.device}: ${used} of ${device.budget_mib} MiB` },
      ...shares.map(({ sidecar, size }) => el("span", {
        class: "share",
        "data-key": sidecar.key,
        title: `${sidecar.model} (${sidecar.key.slice(0, 8)}): counts ${mib(size)}, ${sidecar.memory?.source ?? "?"}`,
        style: `width: ${(100 * size) / scale}%; background: ${colour(sidecar.key)}`,
      })),
      el("span", { class: "budget", title: `budget ${mib(device.budget_mib)}`, style: `left: ${(100 * device.budget_mib) / scale}%` }));
    return el("div", { class: "device", "data-device": device.device },
      el("span", { class: "device-name" }, device.device),
      bar,
      el("span", {
        class: "device-use", "data-field": "use",
        title: `what the children count for against ${device.device}'s budget: for each, the larger of its ` +
          "need (learned from llama-server's own accounting, else estimated from the GGUF and its flags) and what it uses now",
      }, `${mib(used)} counted of ${mib(device.budget_mib)} budget (${mib(device.total_mib)} total)`));
  }));
}

function renderRoutes() {
  // Rebuilt only when the configuration changes (a snapshot); the buttons are updated in place.
  $("routes").querySelector("tbody").replaceChildren(...state.routes.map((r) =>
    el("tr", { "data-route": r.name, "data-key": r.key },
      el("td", {}, r.name),
      el("td", {}, r.kind),
      el("td", {}, r.model),
      el("td", {}, el("code", {}, r.flags.join(" ") || "–")),
      el("td", { class: "key" }, r.key.slice(0, 8)),
      el("td", { class: "actions" }, el("button", {
        "data-action": "load",
        onclick: () => act("POST", `/api/models/${encodeURIComponent(r.name)}/load`),
      }, "Load")))));
  const picker = $("play-model");
  const chosen = picker.value;
  picker.replaceChildren(...state.routes.map((r) => el("option", { value: r.name }, `${r.name} (${r.kind})`)));
  if (state.routes.some((r) => r.name === chosen)) picker.value = chosen;
  updateRoutes();
}

function updateRoutes() {
  for (const row of $("routes").querySelector("tbody").children) {
    const button = row.querySelector("button");
    const live = state.sidecars.has(row.dataset.key);
    if (button.disabled !== live) button.disabled = live;
    setText(button, live ? "Running" : "Load");
  }
}

// -- the selected sidecar's log ------------------------------------------------------

function logLine(text, note = false) {
  const log = $("log");
  const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
  const line = el("div", note ? { class: "note" } : {}, text);
  const filter = $("log-filter").value.toLowerCase();
  if (filter && !text.toLowerCase().includes(filter)) line.classList.add("hidden");
  log.append(line);
  while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
  if (follow) log.scrollTop = log.scrollHeight;
  $("log-follow").hidden = follow;
}

function select(key) {
  if (state.selected === key) return;
  state.selected = key;
  state.logSocket?.close();
  const sidecar = state.sidecars.get(key);
  $("detail").hidden = false;
  $("detail-key").textContent = key.slice(0, 8);
  $("detail-model").textContent = sidecar ? `${sidecar.model} on port ${sidecar.port}` : "";
  $("detail-argv").textContent = (sidecar?.argv ?? []).join(" ");
  $("log").replaceChildren();
  $("log-status").textContent = "connecting";
  const socket = new WebSocket(wsUrl(`/ws/logs/${key}`));
  state.logSocket = socket;
  socket.onopen = () => { $("log-status").textContent = "live"; };
  socket.onmessage = (message) => {
    const item = JSON.parse(message.data);
    if (item.type === "line") logLine(item.text);
    else if (item.type === "dropped") logLine(`… ${item.count} lines dropped (the dashboard fell behind) …`, true);
    else if (item.type === "exit") logLine(`— exited with code ${item.code} after ${item.uptime_s}s —`, true);
    else if (item.type === "error") logLine(item.message, true);
  };
  socket.onclose = () => { if (state.logSocket === socket) $("log-status").textContent = "ended"; };
  renderSidecars();
}

// -- activity: every request that finished, newest first ---------------------------

function addActivity(event) {
  const f = event.figures;
  const status = f.code ? `${f.status} ${f.code}` : String(f.status);
  const row = el("tr", { class: f.status >= 400 || f.code ? "failed" : null, "data-key": event.key ?? "" },
    el("td", {}, new Date(event.ts * 1000).toLocaleTimeString()),
    el("td", { "data-field": "asked" }, f.asked || "–"),
    el("td", { "data-field": "model" }, event.model ?? "–"),
    el("td", {}, f.route),
    el("td", { "data-field": "status" }, status),
    el("td", { class: "num", "data-field": "prompt" }, count(f.prompt_tokens)),
    el("td", { class: "num", "data-field": "generated" }, count(f.generated_tokens)),
    el("td", { class: "num", "data-field": "ttft" }, ms(f.ttft_s)),
    el("td", { class: "num", "data-field": "tokens_per_s" }, rate(f.tokens_per_s)),
    el("td", { class: "num", "data-field": "duration" }, ms(f.duration_s)));
  const body = $("activity").querySelector("tbody");
  body.prepend(row);
  while (body.childElementCount > MAX_ACTIVITY) body.lastElementChild.remove();
  state.activity += 1;
  setText($("activity-count"), `(${Math.min(state.activity, MAX_ACTIVITY)} most recent of ${state.activity})`);
  $("no-activity").hidden = true;
}

// -- charts: a point per stats sample (every 2 s) ----------------------------------

const charts = {
  samples: [], // {t, inflight: {key: n}, memory: {key: MiB}, tokens: {key: n}}
  names: new Map(), // key -> label
  plots: {},
  shape: "",

  // A stats event stands alone (each child's model, requests in flight and RSS), so one replayed from
  // the daemon's history draws the same as a live one, children long gone included.
  sample(event) {
    const t = event.ts, inflight = {}, memory = {};
    for (const [key, usage] of Object.entries(event.sidecars)) {
      if (usage.model) this.names.set(key, label({ model: usage.model, key }));
      inflight[key] = usage.in_flight ?? 0;
      memory[key] = usage.rss_bytes == null ? null : usage.rss_bytes / 1048576;
    }
    this.samples.push({ t, inflight, memory, tokens: this.pending }); // what finished since the last one
    this.pending = {};
    while (this.samples.length && this.samples[0].t < t - HISTORY_S) this.samples.shift();
    if (!this.replaying) this.draw(false);
  },
  replaying: false,

  reset() {
    this.samples = [];
    this.pending = {};
  },

  // A finished request's tokens, spread over the time it generated them.
  tokens(key, figures, end) {
    const generated = figures.generated_tokens;
    if (!generated) return;
    const span = Math.max(figures.duration_s - (figures.ttft_s ?? 0), 0.001);
    const start = end - span;
    for (let i = 1; i < this.samples.length; i++) {
      const from = this.samples[i - 1].t, to = this.samples[i].t;
      const overlap = Math.min(to, end) - Math.max(from, start);
      if (overlap > 0) {
        const tokens = this.samples[i].tokens;
        tokens[key] = (tokens[key] ?? 0) + (generated * overlap) / span;
      }
    }
    // The part after the latest sample belongs to the next one.
    const last = this.samples.at(-1);
    const pending = last ? Math.min(span, end - Math.max(last.t, start)) : span;
    if (pending > 0) this.pending[key] = (this.pending[key] ?? 0) + (generated * pending) / span;
  },
  pending: {},

  data() {
    const keys = [...new Set(this.samples.flatMap((s) => Object.keys(s.inflight)))];
    const xs = this.samples.map((s) => s.t);
    const dt = (i) => (i > 0 ? this.samples[i].t - this.samples[i - 1].t : 2);
    const perKey = (pick) => keys.map((key) => this.samples.map((s, i) => pick(s, key, i)));
    const tokens = perKey((s, key, i) => (key in s.inflight || s.tokens[key] ? (s.tokens[key] ?? 0) / dt(i) : null));
    const inflight = perKey((s, key) => s.inflight[key] ?? null);
    const memory = perKey((s, key) => s.memory[key] ?? null);
    const total = (rows) => xs.map((_, i) => rows.reduce((sum, row) => sum + (row[i] ?? 0), 0));
    return {
      keys,
      tokens: [xs, total(tokens), ...tokens],
      inflight: [xs, total(inflight), ...inflight],
      memory: [xs, ...memory],
    };
  },

  draw(rebuild) {
    if ($("view-charts").hidden) return; // drawn when shown
    const { keys, ...series } = this.data();
    const shape = keys.join(",");
    if (rebuild || shape !== this.shape || !this.plots.tokens) {
      this.shape = shape;
      const perKey = keys.map((key) => ({ label: this.names.get(key) ?? key.slice(0, 8), stroke: colour(key), width: 1.5, spanGaps: false }));
      const pool = { label: "pool", stroke: "#1d2330", width: 2 };
      // Always the last HISTORY_S seconds, from 0 up; so an empty chart still shows its axes (0 to 1).
      const scales = {
        x: { time: true, range: () => [Date.now() / 1000 - HISTORY_S, Date.now() / 1000] },
        y: { range: (u, min, max) => (max == null || max <= 0 ? [0, 1] : uPlot.rangeNum(0, max, 0.1, true)) },
      };
      const make = (name, lines) => {
        this.plots[name]?.destroy();
        const target = $(`chart-${name}`);
        target.replaceChildren();
        this.plots[name] = new uPlot(
          { width: Math.max(target.clientWidth, 300), height: 220, series: [{}, ...lines], scales, legend: { live: false } },
          series[name], target);
        target.append(el("div", { class: "chart-empty" }, "no data yet"));
      };
      make("tokens", [pool, ...perKey]);
      make("inflight", [pool, ...perKey]);
      make("memory", perKey);
    } else {
      for (const name of Object.keys(series)) this.plots[name].setData(series[name]);
    }
    // No child sampled in the window (a pool line of zeros is no data): axes, and "no data yet".
    for (const name of Object.keys(series)) $(`chart-${name}`).dataset.empty = String(keys.length === 0);
  },
};

// -- the playground: one chat, streamed ---------------------------------------------

let playing = null; // the AbortController of the answer being streamed

async function play(event) {
  event.preventDefault();
  const output = $("play-output");
  output.textContent = "";
  output.classList.remove("error");
  setText($("play-figures"), "waiting for the first token…");
  playing = new AbortController();
  $("play-send").disabled = true;
  $("play-stop").hidden = false;
  const started = performance.now();
  let first = null, generated = 0, timings = null, usage = null;
  const figures = () => {
    const ttft = first == null ? "–" : `${Math.round(first - started)} ms`;
    const elapsed = (performance.now() - (first ?? started)) / 1000;
    const speed = timings?.predicted_per_second ?? (generated > 1 && elapsed > 0 ? generated / elapsed : null);
    const tokens = usage?.completion_tokens ?? timings?.predicted_n ?? generated;
    return `TTFT ${ttft} · ${speed == null ? "–" : speed.toFixed(1)} tokens/s · ${tokens} tokens`;
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      signal: playing.signal,
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify({
        model: $("play-model").value,
        messages: [{ role: "user", content: $("play-prompt").value }],
        max_tokens: Number($("play-max").value) || 128,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body?.error?.message ?? `HTTP ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        const text = chunk.choices?.[0]?.delta?.content;
        if (text) {
          first ??= performance.now();
          generated += 1;
          output.append(text);
        }
        timings = chunk.timings ?? timings;
        usage = chunk.usage ?? usage;
        setText($("play-figures"), figures());
      }
    }
    setText($("play-figures"), `${figures()} · done`);
  } catch (error) {
    if (error.name === "AbortError") setText($("play-figures"), `${figures()} · stopped`);
    else { output.classList.add("error"); output.textContent = error.message; setText($("play-figures"), ""); }
  } finally {
    playing = null;
    $("play-send").disabled = false;
    $("play-stop").hidden = true;
  }
}

// -- the events feed ------------------------------------------------------------------

function applyEvent(event) {
  if (event.type === "snapshot") {
    state.sidecars = new Map(event.sidecars.map((s) => [s.key, s]));
    state.routes = event.routes;
    state.pool = event.pool;
    state.memory = event.memory;
    renderRoutes();
    if (event.history) replay(event);
  } else if (event.type === "stats") {
    state.pool.total_rss_bytes = event.total_rss_bytes;
    for (const [key, usage] of Object.entries(event.sidecars)) {
      const sidecar = state.sidecars.get(key);
      if (!sidecar) continue;
      sidecar.usage = usage;
      if (sidecar.memory && usage.counted_mib) sidecar.memory.counted_mib = usage.counted_mib;
    }
    charts.sample(event);
  } else {
    if (event.type === "request" && event.figures) recordRequest(event);
    if (event.sidecar) {
      if (event.type === "exited") state.sidecars.delete(event.key);
      else state.sidecars.set(event.key, { ...state.sidecars.get(event.key), ...event.sidecar });
    }
    if (event.type === "evicted") state.pool.evictions = (state.pool.evictions ?? 0) + (event.reason === "shutdown" ? 0 : 1);
  }
  renderSidecars();
}

function recordRequest(event) {
  addActivity(event);
  if (event.key) charts.tokens(event.key, event.figures, event.ts);
}

// The daemon's last minutes (stats samples and finished requests, oldest first) replace what this
// page had gathered: a page opened after an incident shows it, and a reconnect loses nothing.
function replay(snapshot) {
  HISTORY_S = snapshot.history_s ?? HISTORY_S;
  charts.reset();
  $("activity").querySelector("tbody").replaceChildren();
  state.activity = 0;
  charts.replaying = true;
  for (const event of snapshot.history) {
    if (event.type === "stats") charts.sample(event);
    else if (event.type === "request" && event.figures) recordRequest(event);
  }
  charts.replaying = false;
  $("no-activity").hidden = state.activity > 0;
  charts.draw(false);
}

function connectEvents(delay = 500) {
  const socket = new WebSocket(wsUrl("/ws/events"));
  socket.onopen = () => { $("connection").dataset.state = "open"; $("connection").textContent = "live"; delay = 500; };
  socket.onmessage = (message) => applyEvent(JSON.parse(message.data));
  socket.onclose = () => {
    $("connection").dataset.state = "closed";
    $("connection").textContent = "reconnecting";
    setTimeout(() => connectEvents(Math.min(delay * 2, 10000)), delay);
  };
}

$("log-filter").addEventListener("input", () => {
  const filter = $("log-filter").value.toLowerCase();
  for (const line of $("log").children) {
    line.classList.toggle("hidden", Boolean(filter) && !line.textContent.toLowerCase().includes(filter));
  }
});
$("log").addEventListener("scroll", () => {
  const log = $("log");
  $("log-follow").hidden = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
});
$("log-follow").addEventListener("click", () => { $("log").scrollTop = $("log").scrollHeight; $("log-follow").hidden = true; });
$("play-form").addEventListener("submit", play);
$("play-stop").addEventListener("click", () => playing?.abort());
window.addEventListener("hashchange", showView);
setInterval(renderSidecars, 5000); // keeps "up" and "last used" ages fresh; no network
window.llamaSidecar = { state, charts }; // for a look from the browser's console (and the tests)
showView();
connectEvents();
