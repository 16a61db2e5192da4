// gpucost dashboard: one WebSocket, messages buffered and drawn once per animation frame
// (one Plotly call per message falls behind at ~50 messages/s). Reconnects and resubscribes.
"use strict";
(() => {
  // The key lives in sessionStorage (this tab) unless the user asked to be remembered; a key
  // given in the URL is taken out of it at once (history, screenshots, shared links).
  const params = new URLSearchParams(location.search);
  const apiKey = params.get("api_key") || sessionStorage.getItem("gpucost_api_key") ||
    localStorage.getItem("gpucost_api_key") || "";
  if (params.get("api_key")) {
    sessionStorage.setItem("gpucost_api_key", apiKey);
    params.delete("api_key");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
  }
  const HISTORY_S = 30 * 60;
  const state = {
    windows: new Map(),    // window_start -> Map(keyString -> record)
    tenants: new Set(),
    alerts: [],
    messages: 0,
    points: 0,
    dirty: false,
    tenantFilter: "",
  };
  window.gpucost = state; // for tests and for the curious

  const layoutBase = {
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { color: "#e6e6e6", size: 11 },
    margin: { l: 50, r: 10, t: 10, b: 35 }, legend: { orientation: "h", y: -0.2 },
    xaxis: { gridcolor: "#242c35" }, yaxis: { gridcolor: "#242c35", rangemode: "tozero" },
  };
  const plotCfg = { displayModeBar: false, responsive: true };
  // Plotly writes into the layout it is given (axis types, ranges): every chart gets its own copy,
  // with axis types fixed so an empty first draw cannot make a bar chart's axis a date axis.
  const layout = (xType, yType, extra = {}) => {
    const l = JSON.parse(JSON.stringify(layoutBase));
    l.xaxis.type = xType; l.yaxis.type = yType;
    for (const [k, v] of Object.entries(extra)) l[k] = typeof v === "object" && l[k] ? { ...l[k], ...v } : v;
    return l;
  };
  const layouts = {
    "chart-tenant": () => layout("date", "linear"),
    "chart-idle": () => layout("date", "linear"),
    "chart-service": () => layout("linear", "category", { margin: { l: 170, r: 10, t: 10, b: 30 } }),
    "chart-util": () => layout("category", "linear", { yaxis: { range: [0, 100], title: { text: "%" } } }),
    "chart-reconcile": () => layout("category", "linear", { barmode: "group" }),
  };
  for (const id of Object.keys(layouts)) Plotly.newPlot(id, [], layouts[id](), plotCfg);

  // Every table is built from text nodes: a tenant or service name is data, never markup.
  function table(head, rows) {
    const t = document.createElement("table");
    const tr = t.createTHead().insertRow();
    for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
    const body = t.createTBody();
    for (const row of rows) {
      const r = body.insertRow();
      for (const cell of row) {
        const td = r.insertCell();
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell == null ? "" : String(cell);
      }
    }
    return t;
  }

  const keyOf = (r) => `${r.tenant}|${r.service}|${r.region}|${r.gpu_model}`;

  function add(rec) {
    if (rec.kind && rec.kind !== "usage") return;
    let w = state.windows.get(rec.window_start);
    if (!w) { w = new Map(); state.windows.set(rec.window_start, w); }
    if (!w.has(keyOf(rec))) state.points += 1;
    w.set(keyOf(rec), rec);
    if (!state.tenants.has(rec.tenant)) {
      state.tenants.add(rec.tenant);
      const opt = document.createElement("option"); opt.value = opt.textContent = rec.tenant;
      document.getElementById("tenant-filter").appendChild(opt);
    }
    state.dirty = true;
  }

  function addAlert(a) {
    state.alerts.unshift(a);
    state.alerts.length = Math.min(state.alerts.length, 100);
    state.dirty = true;
  }

  // ---- drawing, at most once per frame --------------------------------------------------
  function completeStarts() {
    const starts = [...state.windows.keys()].sort((a, b) => a - b);
    if (starts.length < 2) return starts;
    const newest = starts[starts.length - 1];
    let step = Infinity;
    for (let i = 1; i < starts.length; i++) step = Math.min(step, starts[i] - starts[i - 1]);
    const anyRec = state.windows.get(newest).values().next().value;
    const size = anyRec ? anyRec.window_s : 60;
    // A window is complete once data for a window starting after its end has arrived.
    return starts.filter((s) => s + size <= newest + step);
  }

  function draw() {
    state.dirty = false;
    const tf = state.tenantFilter;
    const now = Math.max(0, ...state.windows.keys());
    for (const s of [...state.windows.keys()]) if (s < now - HISTORY_S) state.windows.delete(s);
    const starts = completeStarts();
    const byTenant = new Map(), idleByTenant = new Map();
    for (const s of starts) {
      const x = new Date((s + (state.windows.get(s).values().next().value?.window_s || 60)) * 1000);
      const sums = new Map(), idle = new Map();
      for (const r of state.windows.get(s).values()) {
        if (tf && r.tenant !== tf) continue;
        const scale = 3600 / r.window_s;
        sums.set(r.tenant, (sums.get(r.tenant) || 0) + r.spend_rate_usd_h);
        idle.set(r.tenant, (idle.get(r.tenant) || 0) + r.idle_usd * scale);
      }
      for (const [t, v] of sums) { if (!byTenant.has(t)) byTenant.set(t, { x: [], y: [] }); byTenant.get(t).x.push(x); byTenant.get(t).y.push(v); }
      for (const [t, v] of idle) { if (!idleByTenant.has(t)) idleByTenant.set(t, { x: [], y: [] }); idleByTenant.get(t).x.push(x); idleByTenant.get(t).y.push(v); }
    }
    const lines = (m) => [...m.entries()].sort().map(([name, d]) => ({ name, x: d.x, y: d.y, type: "scatter", mode: "lines" }));
    Plotly.react("chart-tenant", lines(byTenant), layouts["chart-tenant"](), plotCfg);
    Plotly.react("chart-idle", lines(idleByTenant).map((t) => ({ ...t, fill: "tozeroy" })), layouts["chart-idle"](), plotCfg);

    const last = starts.length ? state.windows.get(starts[starts.length - 1]) : new Map();
    const svc = new Map(), util = new Map();
    let rate = 0, idleRate = 0, gpuS = 0, utilS = 0;
    for (const r of last.values()) {
      if (tf && r.tenant !== tf) continue;
      const name = `${r.tenant}/${r.service}`;
      svc.set(name, (svc.get(name) || 0) + r.spend_rate_usd_h);
      const u = util.get(r.gpu_model) || { g: 0, u: 0 };
      u.g += r.gpu_seconds; u.u += r.util_avg * r.gpu_seconds; util.set(r.gpu_model, u);
      rate += r.spend_rate_usd_h; idleRate += r.idle_usd * 3600 / r.window_s; gpuS += r.gpu_seconds; utilS += r.util_avg * r.gpu_seconds;
    }
    const svcSorted = [...svc.entries()].sort((a, b) => a[1] - b[1]);
    Plotly.react("chart-service", [{ type: "bar", orientation: "h", x: svcSorted.map((e) => e[1]), y: svcSorted.map((e) => e[0]), marker: { color: "#4cc2ff" } }],
      layouts["chart-service"](), plotCfg);
    const models = [...util.keys()].sort();
    Plotly.react("chart-util", [{ type: "bar", x: models, y: models.map((m) => util.get(m).u / util.get(m).g * 100), marker: { color: "#3ddc97" } }],
      layouts["chart-util"](), plotCfg);

    const usd = (v) => "$" + v.toLocaleString(undefined, { maximumFractionDigits: v < 100 ? 2 : 0 });
    document.getElementById("kpi-rate").textContent = usd(rate);
    document.getElementById("kpi-month").textContent = usd(rate * 24 * 30);
    document.getElementById("kpi-idle").textContent = usd(idleRate);
    document.getElementById("kpi-util").textContent = gpuS ? (utilS / gpuS * 100).toFixed(1) + " %" : "–";
    document.getElementById("points-count").textContent = state.points;
    document.getElementById("msg-count").textContent = state.messages;

    const ul = document.getElementById("alerts");
    if (state.alerts.length) {
      ul.replaceChildren(...state.alerts.slice(0, 50).map((a) => {
        const li = document.createElement("li");
        li.className = a.state;
        li.textContent = `${a.state === "firing" ? "▲" : "▼"} ${a.rule_name || a.rule_kind || "alert"} — ${a.tenant || ""} ${a.service || ""}: ${a.summary || ""}`;
        return li;
      }));
    }
  }

  function frame() {
    if (state.dirty) draw();
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);

  document.getElementById("tenant-filter").addEventListener("change", (e) => { state.tenantFilter = e.target.value; state.dirty = true; });

  // ---- history first, then live ----------------------------------------------------------
  const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  async function loadHistory() {
    const since = Math.floor(Date.now() / 1000) - HISTORY_S;
    try {
      const res = await fetch(`/api/history?since=${since}`, { headers });
      if (res.ok) for (const r of await res.json()) add(r);
    } catch (e) { /* live data will fill in */ }
  }

  async function loadRecommendations() {
    const el = document.getElementById("recommendations");
    try {
      const res = await fetch("/api/recommendations/live", { headers });
      if (!res.ok) { el.textContent = "not available"; return; }
      const rows = await res.json();
      if (!rows.length) { el.textContent = "no services with token counts yet"; return; }
      el.replaceChildren(table(["service", "now $/1M tok", "best alternative", "saves / month"], rows.map((r) => [
        `${r.tenant}/${r.service}`,
        r.current_usd_per_million_tokens != null ? "$" + r.current_usd_per_million_tokens.toFixed(2) : "–",
        r.best_alternative || "no recommendation yet",
        r.savings_usd_per_month != null ? "$" + Math.round(r.savings_usd_per_month).toLocaleString() : "–",
      ])));
    } catch (e) { el.textContent = "not available"; }
  }

  // Billing line items arrive hours late: a slow poll is enough.
  async function loadReconciliation() {
    try {
      const res = await fetch("/api/reconciliation?days=7", { headers });
      if (!res.ok) return;
      const rows = (await res.json()).filter((r) => !state.tenantFilter || r.tenant === state.tenantFilter);
      const x = rows.map((r) => `${r.tenant} ${r.day.slice(5)}`);
      Plotly.react("chart-reconcile", [
        { type: "bar", name: "metered (usage x catalog)", x, y: rows.map((r) => r.metered_usd), marker: { color: "#4cc2ff" } },
        { type: "bar", name: "billed (line items)", x, y: rows.map((r) => r.billed_usd), marker: { color: "#f5a524" } },
      ], layouts["chart-reconcile"](), plotCfg);
    } catch (e) { /* shown on the next poll */ }
  }

  let backoff = 500, reconnects = 0;
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws${apiKey ? "?api_key=" + encodeURIComponent(apiKey) : ""}`);
    const conn = document.getElementById("conn");
    ws.onopen = () => {
      if (backoff > 500 || reconnects++ > 0) loadHistory();  // windows emitted while away
      backoff = 500;
      conn.textContent = "live"; conn.className = "pill on";
      ws.send(JSON.stringify({ op: "subscribe", channel: "aggregates", filter: {} }));
      ws.send(JSON.stringify({ op: "subscribe", channel: "alerts", filter: {} }));
    };
    ws.onmessage = (ev) => {
      state.messages += 1;
      const msg = JSON.parse(ev.data);
      if (msg.type === "aggregate") add(msg.data);
      else if (msg.type === "snapshot" && msg.channel === "aggregates") msg.data.forEach(add);
      else if (msg.type === "snapshot" && msg.channel === "alerts") msg.data.forEach(addAlert);
      else if (msg.type === "alert") addAlert(msg.data);
      state.dirty = true;
    };
    ws.onclose = async () => {
      conn.textContent = "reconnecting…"; conn.className = "pill off";
      // A revoked key closes the socket: ask who we are before retrying, and stop at the prompt.
      if (!(await checkKey())) return;
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  // Without a valid key the WebSocket handshake is refused, which a browser cannot tell from a
  // network error: ask the API who we are first, and say what is missing instead of retrying.
  async function checkKey() {
    const res = await fetch("/api/keys/me", { headers }).catch(() => null);
    if (res && res.status === 401) {
      sessionStorage.removeItem("gpucost_api_key"); localStorage.removeItem("gpucost_api_key");
      document.getElementById("auth").hidden = false;
      document.getElementById("auth-why").textContent = apiKey ? "The key given was not accepted (revoked or mistyped)." : "";
      const conn = document.getElementById("conn");
      conn.textContent = "no key"; conn.className = "pill off";
      return false;
    }
    return true;
  }
  document.getElementById("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = document.getElementById("auth-key").value.trim();
    sessionStorage.setItem("gpucost_api_key", key);
    if (document.getElementById("auth-remember").checked) localStorage.setItem("gpucost_api_key", key);
    else localStorage.removeItem("gpucost_api_key");
    location.reload();
  });
  checkKey().then((ok) => { if (ok) loadHistory().then(connect); });
  loadRecommendations();
  setInterval(loadRecommendations, 60000);
  loadReconciliation();
  setInterval(loadReconciliation, 60000);
})();
