// The llama-sidecar dashboard: lives on /ws/events (a snapshot, then every pool
// event) and /ws/logs/{key} for the selected sidecar. No build step, no network
// beyond the daemon itself.

const MAX_LOG_LINES = 2000;
const state = { sidecars: new Map(), routes: [], pool: {}, memory: { devices: [] }, selected: null, logSocket: null };

const $ = (id) => document.getElementById(id);
// With admin keys set, open the dashboard as /?key=KEY: the key goes along with every call.
const KEY = new URLSearchParams(location.search).get("key");
const withKey = (path) => (KEY ? `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(KEY)}` : path);
const wsUrl = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${withKey(path)}`;

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

function bytes(value) {
  if (value == null) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let size = value, unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit++; }
  return `${size.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function ago(timestamp) {
  if (!timestamp) return "–";
  const seconds = Math.max(0, Math.floor(Date.now() / 1000 - timestamp));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

async function act(method, path) {
  const response = await fetch(path, { method, headers: KEY ? { authorization: `Bearer ${KEY}` } : {} });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    alert(body?.error?.message ?? `${method} ${path}: HTTP ${response.status}`);
  }
}

// -- rendering -----------------------------------------------------------------

function renderSummary() {
  const sidecars = [...state.sidecars.values()];
  const cap = state.pool.max_sidecars; // 0: no count limit, memory alone decides
  $("sum-live").textContent = cap ? `${sidecars.length}/${cap}` : `${sidecars.length}`;
  $("sum-memory").textContent = bytes(state.pool.total_rss_bytes);
  $("sum-inflight").textContent = sidecars.reduce((sum, s) => sum + (s.in_flight ?? 0), 0);
  $("sum-evictions").textContent = state.pool.evictions ?? 0;
}

function renderSidecars() {
  const body = $("sidecars").querySelector("tbody");
  const rows = [...state.sidecars.values()].sort((a, b) => a.model.localeCompare(b.model));
  body.replaceChildren(...rows.map((s) => {
    const usage = s.usage ?? {};
    const row = el("tr", { "data-key": s.key, onclick: () => select(s.key) },
      el("td", {}, s.model),
      el("td", {}, (s.agents ?? []).join(", ") || "–"),
      el("td", { class: "key" }, s.key.slice(0, 8)),
      el("td", {}, s.port ?? "–"),
      el("td", {}, s.pid ?? "–"),
      el("td", {}, el("span", { class: `state ${s.state}`, "data-field": "state" }, s.state)),
      el("td", {}, ago(s.started_at)),
      el("td", {}, ago(s.last_used)),
      el("td", { class: "num", "data-field": "in_flight" }, s.in_flight ?? 0),
      el("td", { class: "num" }, s.restarts ?? 0),
      el("td", { class: "num" }, bytes(usage.rss_bytes)),
      el("td", { class: "num" }, usage.cpu_percent == null ? "–" : `${usage.cpu_percent}%`),
      el("td", { class: "actions" },
        el("button", { "data-action": "restart", onclick: (e) => { e.stopPropagation(); act("POST", `/api/sidecars/${s.key}/restart`); } }, "Restart"),
        el("button", { class: "danger", "data-action": "stop", onclick: (e) => { e.stopPropagation(); act("DELETE", `/api/sidecars/${s.key}`); } }, "Stop")));
    if (s.key === state.selected) row.classList.add("selected");
    return row;
  }));
  $("no-sidecars").hidden = rows.length > 0;
  renderSummary();
  renderMemory();
  renderRoutes();
}

// A stable colour per child, so its share keeps its colour on every device bar.
const hue = (key) => [...key].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);
const mib = (value) => (value >= 1024 ? `${(value / 1024).toFixed(1)} GiB` : `${value} MiB`);

function renderMemory() {
  // Budgets and totals come with the snapshot; each child's share from its latest event or stats sample.
  const sidecars = [...state.sidecars.values()];
  $("memory").replaceChildren(...state.memory.devices.map((device) => {
    const scale = Math.max(device.total_mib, device.budget_mib, 1);
    const shares = sidecars
      .map((s) => ({ sidecar: s, mib: s.memory?.counted_mib?.[device.device] ?? 0 }))
      .filter((share) => share.mib > 0);
    const used = shares.reduce((sum, share) => sum + share.mib, 0);
    const bar = el("div", { class: "bar", role: "img", "aria-label": `${device.device}: ${used} of ${device.budget_mib} MiB` },
      ...shares.map(({ sidecar, mib: size }) => el("span", {
        class: "share",
        "data-key": sidecar.key,
        title: `${sidecar.model} (${sidecar.key.slice(0, 8)}): ${mib(size)}, ${sidecar.memory?.source ?? "?"}`,
        style: `width: ${(100 * size) / scale}%; background: hsl(${hue(sidecar.key)} 60% 55%)`,
      })),
      el("span", { class: "budget", title: `budget ${mib(device.budget_mib)}`, style: `left: ${(100 * device.budget_mib) / scale}%` }));
    return el("div", { class: "device", "data-device": device.device },
      el("span", { class: "device-name" }, device.device),
      bar,
      el("span", { class: "device-use", "data-field": "use" },
        `${mib(used)} of ${mib(device.budget_mib)} budget (${mib(device.total_mib)} total)`));
  }));
}

function renderRoutes() {
  const live = new Set(state.sidecars.keys());
  $("routes").querySelector("tbody").replaceChildren(...state.routes.map((r) =>
    el("tr", { "data-route": r.name },
      el("td", {}, r.name),
      el("td", {}, r.kind),
      el("td", {}, r.model),
      el("td", {}, el("code", {}, r.flags.join(" ") || "–")),
      el("td", { class: "key" }, r.key.slice(0, 8)),
      el("td", { class: "actions" }, el("button", {
        "data-action": "load",
        disabled: live.has(r.key) ? "" : null,
        onclick: () => act("POST", `/api/models/${encodeURIComponent(r.name)}/load`),
      }, live.has(r.key) ? "Running" : "Load")))));
}

// -- the selected sidecar's log ------------------------------------------------

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

// -- the events feed -------------------------------------------------------------

function applyEvent(event) {
  if (event.type === "snapshot") {
    state.sidecars = new Map(event.sidecars.map((s) => [s.key, s]));
    state.routes = event.routes;
    state.pool = event.pool;
    state.memory = event.memory;
  } else if (event.type === "stats") {
    state.pool.total_rss_bytes = event.total_rss_bytes;
    for (const [key, usage] of Object.entries(event.sidecars)) {
      const sidecar = state.sidecars.get(key);
      if (!sidecar) continue;
      sidecar.usage = usage;
      if (sidecar.memory && usage.counted_mib) sidecar.memory.counted_mib = usage.counted_mib;
    }
  } else if (event.sidecar) {
    if (event.type === "exited") state.sidecars.delete(event.key);
    else state.sidecars.set(event.key, { ...state.sidecars.get(event.key), ...event.sidecar });
    if (event.type === "evicted") state.pool.evictions = (state.pool.evictions ?? 0) + (event.reason === "shutdown" ? 0 : 1);
  }
  renderSidecars();
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
setInterval(renderSidecars, 5000); // keeps "up" and "last used" ages fresh; no network
connectEvents();
