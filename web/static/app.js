// gpucost dashboard: the overview and the per-service drill-down. One WebSocket, messages buffered
// and drawn once per animation frame (one Plotly call per message falls behind at ~50 messages/s).
// Every view is a URL: filters, time range and view live in the query string, so a link reproduces
// the view and back/forward work (pushState + popstate). Reconnects resubscribe; a refused key stops
// at the key prompt.
"use strict";
(() => {
  const L = window.gpucostLib;
  const { el, table, api, usd, num } = L;
  const FILTERS = ["tenant", "service", "region", "gpu_model", "model_version"];
  const RANGES = { "15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400 };
  const LIVE_KEEP_S = 15 * 60;  // the 60 s windows kept for the "last complete window" panels

  // History resolution by span: 1-minute windows up to 6 h, hourly rollups up to 7 days, daily beyond.
  const resolutionFor = (spanS) => (spanS <= 6 * 3600 ? 60 : spanS <= 7 * 86400 ? 3600 : 86400);

  const state = {
    view: "overview", filter: {}, range: "1h", from: null, to: null, res: 60, since: 0, until: null,
    series: new Map(),   // window_start -> Map(key -> record), at resolution `res`, for the time charts
    live: new Map(),     // window_start -> Map(key -> record), 60 s windows from the socket
    alerts: new Map(),   // fingerprint|state|starts_at -> alert (a reconnect's snapshot adds no duplicates)
    options: Object.fromEntries(FILTERS.map((f) => [f, new Set()])),
    messages: 0, points: 0, dirty: false, historyRequests: [], generation: 0,
  };
  window.gpucost = state; // for tests and for the curious

  // ---- URL state ----------------------------------------------------------------------------------
  function readUrl() {
    const p = new URLSearchParams(location.search);
    state.view = location.pathname.startsWith("/webhooks/log") ? "webhooks" : (p.get("view") || "overview");
    state.filter = {};
    for (const f of FILTERS) if (p.get(f)) state.filter[f] = p.get(f);
    state.range = p.get("range") && (RANGES[p.get("range")] || p.get("range") === "custom") ? p.get("range") : "1h";
    state.from = Number(p.get("from")) || null;
    state.to = Number(p.get("to")) || null;
    if (state.range === "custom" && !(state.from && state.to && state.to > state.from)) state.range = "1h";
  }
  function urlFor(changes) {
    const p = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(changes)) if (v == null || v === "") p.delete(k); else p.set(k, v);
    if (p.get("view") === "overview") p.delete("view");
    if (p.get("range") === "1h") p.delete("range");
    if (p.get("range") !== "custom") { p.delete("from"); p.delete("to"); }
    const path = p.get("view") === "webhooks" ? "/webhooks/log" : "/";
    if (path !== "/") p.delete("view");
    return path + (p.toString() ? "?" + p : "");
  }
  function navigate(changes) {
    if (changes.view && changes.view !== "webhooks" && location.pathname !== "/") {
      history.pushState(null, "", "/" + location.search); // leave /webhooks/log first
    }
    history.pushState(null, "", urlFor(changes));
    apply();
  }
  window.gpucostNavigate = navigate;
  window.addEventListener("popstate", apply);
  // Links inside the app navigate without a reload (and stay keyboard reachable as links).
  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a[data-nav]");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    history.pushState(null, "", a.getAttribute("href"));
    apply();
  });
  for (const a of document.querySelectorAll("nav a.nav")) a.dataset.nav = "1";
  document.getElementById("home").dataset.nav = "1";

  // ---- applying the URL ---------------------------------------------------------------------------
  let dataKey = "", shownView = "";
  function apply() {
    readUrl();
    const now = Math.floor(Date.now() / 1000);
    if (state.range === "custom") { state.since = state.from; state.until = state.to; }
    else { state.since = now - RANGES[state.range]; state.until = null; }
    state.res = resolutionFor((state.until || now) - state.since);
    for (const f of FILTERS) {
      const sel = document.getElementById("f-" + f);
      ensureOption(f, state.filter[f] || "");
      sel.value = state.filter[f] || "";
    }
    document.getElementById("f-range").value = state.range;
    document.getElementById("custom-range").hidden = state.range !== "custom";
    if (state.range === "custom") {
      document.getElementById("f-from").value = localInput(state.from);
      document.getElementById("f-to").value = localInput(state.to);
    }
    document.getElementById("resolution").textContent =
      `${state.res === 60 ? "1-minute windows" : state.res === 3600 ? "hourly rollups" : "daily rollups"}` +
      (state.range === "custom" ? "" : ", live");
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + state.view;
    // Charts drawn while their view was hidden have no width: size them to the view now shown.
    requestAnimationFrame(() => {
      for (const c of document.querySelectorAll(`#view-${state.view} .chart`)) if (c.data) Plotly.Plots.resize(c);
    });
    for (const a of document.querySelectorAll("nav a.nav")) a.classList.toggle("active", a.dataset.view === state.view);
    document.getElementById("filters").hidden = state.view === "manage" || state.view === "webhooks";
    const key = JSON.stringify([state.filter, state.range, state.from, state.to]);
    if (key !== dataKey) { dataKey = key; reload(); }
    else if (state.view !== shownView && state.view === "overview") { loadBudgets(); loadRecommendations(); }
    shownView = state.view;
    if (state.view === "service") drawServiceHeader();
    window.dispatchEvent(new CustomEvent("gpucost-view", { detail: state.view }));
    state.dirty = true;
  }
  const localInput = (ts) => {
    const d = new Date(ts * 1000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  };

  function ensureOption(f, value) {
    if (!value) return;
    const sel = document.getElementById("f-" + f);
    if (![...sel.options].some((o) => o.value === value)) sel.appendChild(el("option", { value }, value));
  }
  function learn(rec) {
    for (const f of FILTERS) {
      const v = rec[f];  // "" (no model version) is not an option: "all" has that value
      if (v && !state.options[f].has(v)) { state.options[f].add(v); ensureOption(f, v); }
    }
  }
  for (const f of FILTERS) {
    document.getElementById("f-" + f).addEventListener("change", (e) => navigate({ [f]: e.target.value }));
  }
  document.getElementById("f-range").addEventListener("change", (e) => {
    if (e.target.value === "custom") {
      const now = Math.floor(Date.now() / 1000);
      navigate({ range: "custom", from: now - 86400, to: now });
    } else navigate({ range: e.target.value });
  });
  document.getElementById("f-apply").addEventListener("click", () => {
    const from = Math.floor(new Date(document.getElementById("f-from").value).getTime() / 1000);
    const to = Math.floor(new Date(document.getElementById("f-to").value).getTime() / 1000);
    if (from && to && to > from) navigate({ range: "custom", from, to });
  });
  document.getElementById("f-clear").addEventListener("click", () =>
    navigate(Object.fromEntries(FILTERS.map((f) => [f, null]))));

  const matches = (rec) => FILTERS.every((f) => !state.filter[f] || rec[f] === state.filter[f]);
  const keyOf = (r) => `${r.tenant}|${r.service}|${r.region}|${r.gpu_model}|${r.model_version || ""}`;

  // ---- records -------------------------------------------------------------------------------------
  function put(map, rec) {
    let w = map.get(rec.window_start);
    if (!w) { w = new Map(); map.set(rec.window_start, w); }
    w.memo = null;  // per-window sums (timeSeries) are recomputed only for windows that changed
    const fresh = !w.has(keyOf(rec));
    w.set(keyOf(rec), rec);
    return fresh;
  }
  function addLive(rec) {
    if (rec.kind && rec.kind !== "usage") return;
    learn(rec);
    if (!matches(rec) || rec.window_s !== 60) return;
    put(state.live, rec);
    if (state.res === 60 && state.until == null && rec.window_start >= state.since) {
      if (put(state.series, rec)) state.points += 1;
    }
    state.dirty = true;
  }
  function addHistory(rec) {
    learn(rec);
    if (!matches(rec)) return;
    if (put(state.series, rec)) state.points += 1;
    if (rec.window_s === 60) put(state.live, rec);
    state.dirty = true;
  }
  function addAlert(a) {
    if (!matches({ ...a, service: a.service ?? state.filter.service, region: a.region ?? state.filter.region,
      gpu_model: a.gpu_model ?? state.filter.gpu_model, model_version: a.model_version ?? state.filter.model_version })) return;
    state.alerts.set(`${a.fingerprint}|${a.state}|${a.starts_at}`, a);
    state.dirty = true;
  }

  // ---- Plotly ------------------------------------------------------------------------------------
  const plotCfg = { displayModeBar: false, responsive: true };
  function layout(xType, yType, extra = {}) {
    const grid = L.cssVar("--grid"), fg = L.cssVar("--fg");
    const l = {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { color: fg, size: 11 },
      margin: { l: 60, r: 10, t: 10, b: 40 }, legend: { orientation: "h", y: -0.25 },
      xaxis: { type: xType, gridcolor: grid, automargin: true }, yaxis: { type: yType, gridcolor: grid, rangemode: "tozero", automargin: true },
    };
    for (const [k, v] of Object.entries(extra)) l[k] = typeof v === "object" && l[k] ? { ...l[k], ...v } : v;
    return l;
  }
  const yTitle = (t) => ({ yaxis: { title: { text: t } } });
  const charts = {
    "chart-tenant": () => layout("date", "linear", yTitle("USD/h")),
    "chart-idle": () => layout("date", "linear", yTitle("USD/h")),
    "chart-tokens": () => layout("date", "linear", yTitle("USD per 1M tokens")),
    "chart-versions": () => layout("date", "linear", yTitle("USD/h")),
    "chart-service": () => layout("linear", "category", { margin: { l: 10, r: 10, t: 10, b: 40 }, xaxis: { title: { text: "USD/h" } } }),
    "chart-util": () => layout("category", "linear", { yaxis: { range: [0, 100], title: { text: "%" } } }),
    "chart-reconcile": () => layout("category", "linear", { barmode: "group", ...yTitle("USD") }),
    "chart-forecast": () => layout("date", "linear", yTitle("USD per hour")),
    "chart-svc-spend": () => layout("date", "linear", yTitle("USD/h")),
    "chart-svc-gpus": () => layout("category", "linear", yTitle("GPUs")),
    "chart-svc-util": () => layout("category", "linear", { ...yTitle("windows"), xaxis: { title: { text: "utilization %" } } }),
  };
  for (const id of Object.keys(charts)) Plotly.newPlot(id, [], charts[id](), plotCfg);
  // An empty chart says why and what to do, instead of showing bare axes.
  const EMPTY = {
    "chart-reconcile": "no billing line items yet: they arrive on gpu.billing from billing exports (gpucost import billing; the simulator imports its own FOCUS export as each hour closes)",
    "chart-tokens": "no token counts for this view: services report tokens in their usage events",
    "chart-versions": "no usage for this view yet: each service's model versions (model_version in its usage events) show here",
    "chart-forecast": "no spend history for this view yet",
  };
  function emptyText(id) {
    if (EMPTY[id]) return EMPTY[id];
    if (state.res > 60) return `no ${state.res === 3600 ? "hourly" : "daily"} rollups for this range yet: pick a shorter range for 1-minute windows`;
    return "no usage for this view yet: start the simulator (gpucost up) or an agent, or clear the filters";
  }
  function react(id, traces) {
    const l = charts[id]();
    const points = traces.reduce((n, t) => n + ((t.x || t.y || []).length || 0), 0);
    if (!points) l.annotations = [{ text: emptyText(id), showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
      font: { color: L.cssVar("--muted"), size: 13 } }];
    return Plotly.react(id, traces, l, plotCfg);
  }

  // CSV of every chart's data: a button beside each chart's title.
  for (const id of Object.keys(charts)) {
    const h2 = document.getElementById(id).parentElement.querySelector("h2");
    h2.appendChild(el("button", { type: "button", className: "csv", title: "download this chart's data as CSV",
      dataset: { chart: id }, onclick: () => L.download(`gpucost-${id.replace("chart-", "")}.csv`, L.chartCsv(document.getElementById(id))) }, "CSV"));
  }
  document.getElementById("chart-service").on("plotly_click", (ev) => {
    const label = ev.points && ev.points[0] && ev.points[0].y;
    const rec = label && serviceLabels.get(label);
    if (rec) navigate({ view: "service", tenant: rec.tenant, service: rec.service });
  });
  const serviceLabels = new Map();

  // ---- drawing, at most once per frame -------------------------------------------------------------
  function completeStarts(map) {
    const starts = [...map.keys()].sort((a, b) => a - b);
    if (starts.length < 2) return starts;
    const newest = starts[starts.length - 1];
    let step = Infinity;
    for (let i = 1; i < starts.length; i++) step = Math.min(step, starts[i] - starts[i - 1]);
    const size = map.get(newest).values().next().value?.window_s || 60;
    if (size > 60) return starts;  // rollups: the current hour/day is shown as far as it goes
    return starts.filter((s) => s + size <= newest + step);  // complete once a later window arrived
  }

  // Sums per group and window, memoised on the window (put() clears it): a draw costs the windows
  // that changed plus one pass over (window, group), not a pass over every record. Ranges beyond
  // 15 minutes plot the aligned windows only (the hopping ones overlap them, 6 per minute).
  function timeSeries(name, valueOf, groupOf) {
    const groups = new Map();
    const aligned = state.range !== "15m";
    const starts = completeStarts(state.series).filter((s) => !aligned || s % 60 === 0);
    for (const s of starts) {
      const w = state.series.get(s);
      if (!w.memo) w.memo = {};
      let sums = w.memo[name];
      if (!sums) {
        sums = new Map();
        for (const r of w.values()) {
          // valueOf: [value] is summed per group; [numerator, denominator] gives a ratio of sums.
          const g = groupOf(r), v = valueOf(r);
          const acc = sums.get(g) || [0, 0, v.length > 1];
          acc[0] += v[0]; if (v.length > 1) acc[1] += v[1];
          sums.set(g, acc);
        }
        w.memo[name] = sums;
      }
      const x = new Date((s + (w.values().next().value?.window_s || 60)) * 1000);
      for (const [g, [a, b, ratio]] of sums) {
        if (ratio && !b) continue;
        if (!groups.has(g)) groups.set(g, { x: [], y: [] });
        groups.get(g).x.push(x); groups.get(g).y.push(ratio ? a / b : a);
      }
    }
    return groups;
  }

  function draw() {
    state.dirty = false;
    const now = Math.max(0, ...state.live.keys());
    for (const s of [...state.live.keys()]) if (s < now - LIVE_KEEP_S) state.live.delete(s);
    if (state.until == null) {
      const since = Math.floor(Date.now() / 1000) - (RANGES[state.range] || 3600);
      for (const s of [...state.series.keys()]) if (s < since - state.res) state.series.delete(s);
    }
    document.getElementById("points-count").textContent = state.points;
    document.getElementById("msg-count").textContent = state.messages;
    drawKpis();
    if (state.view === "overview") drawOverview();
    if (state.view === "service") drawService();
    drawAlerts();
  }

  const rateOf = (r) => r.spend_usd * 3600 / r.window_s;
  const idleOf = (r) => r.idle_usd * 3600 / r.window_s;

  function lastLive() {
    const starts = completeStarts(state.live);
    return starts.length ? [...state.live.get(starts[starts.length - 1]).values()] : [];
  }
  function drawKpis() {
    let rate = 0, idle = 0, g = 0, u = 0;
    for (const r of lastLive()) { rate += r.spend_rate_usd_h; idle += idleOf(r); g += r.gpu_seconds; u += r.util_avg * r.gpu_seconds; }
    const have = lastLive().length > 0;
    document.getElementById("kpi-rate").textContent = have ? usd(rate) : "–";
    document.getElementById("kpi-month").textContent = have ? usd(rate * 730) : "–";
    document.getElementById("kpi-idle").textContent = have ? usd(idle) : "–";
    document.getElementById("kpi-util").textContent = g ? (u / g * 100).toFixed(1) + " %" : "–";
  }

  // colorBy(name): a tenant (its colour) or a colour itself ("#..."). Several lines of one tenant
  // (its services) are told apart by dash.
  const DASHES = ["solid", "dot", "dash", "dashdot", "longdash"];
  function lines(groups, colorBy, extra = {}) {
    const perColor = new Map();
    return [...groups.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([name, d]) => {
      const c = colorBy(name), color = c.startsWith("#") ? c : L.colorOf(c);
      const n = perColor.get(color) || 0;
      perColor.set(color, n + 1);
      return { name, x: d.x, y: d.y, type: "scatter", mode: d.x.length > 1 ? "lines" : "markers",
        line: { color, width: 2, dash: DASHES[n % DASHES.length] }, marker: { color }, ...extra };
    });
  }

  const TOP_SERVICES = 12;
  function topServices(n) {  // the n services with the most tokens in the last complete window
    const tokens = new Map();
    for (const r of lastLive()) if (r.tokens) tokens.set(`${r.tenant}/${r.service}`, (tokens.get(`${r.tenant}/${r.service}`) || 0) + r.tokens);
    if (tokens.size <= n) return null;
    return new Set([...tokens.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map((e) => e[0]));
  }

  const versionService = new Map();  // a line of the version chart -> its tenant/service
  function topSpenders(n) {  // the n services that spent most in the last complete window
    const spend = new Map();
    for (const r of lastLive()) spend.set(`${r.tenant}/${r.service}`, (spend.get(`${r.tenant}/${r.service}`) || 0) + r.spend_usd);
    if (spend.size <= n) return null;
    return new Set([...spend.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map((e) => e[0]));
  }

  function drawOverview() {
    react("chart-tenant", lines(timeSeries("tenant-rate", (r) => [rateOf(r)], (r) => r.tenant), (n) => n));
    react("chart-idle", lines(timeSeries("tenant-idle", (r) => [idleOf(r)], (r) => r.tenant), (n) => n, { fill: "tozeroy" }));
    // Cost per 1M tokens: spend over tokens of the same windows, per service that reports tokens;
    // the services with the most tokens, so that a thousand lines do not hide each other.
    const tok = timeSeries("service-tokens", (r) => [r.tokens ? r.spend_usd * 1e6 : 0, r.tokens || 0], (r) => `${r.tenant}/${r.service}`);
    const top = topServices(TOP_SERVICES);
    for (const k of [...tok.keys()]) if (top && !top.has(k)) tok.delete(k);
    react("chart-tokens", lines(tok, (n) => n.split("/")[0]));
    // Spend rate per service and model version: a canary beside the stable version it replaces
    // (one colour per tenant, one dash per line); events without a version show as "(none)".
    const ver = timeSeries("version-rate", (r) => [rateOf(r)], (r) => {
      const label = `${r.tenant}/${r.service} ${r.model_version || "(none)"}`;
      versionService.set(label, `${r.tenant}/${r.service}`);
      return label;
    });
    const spenders = topSpenders(TOP_SERVICES);
    for (const k of [...ver.keys()]) if (spenders && !spenders.has(versionService.get(k))) ver.delete(k);
    react("chart-versions", lines(ver, (n) => n.split("/")[0]));

    const svc = new Map(), util = new Map();
    serviceLabels.clear();
    for (const r of lastLive()) {
      // The optimizer's usage is priced as the GPU instance it stands for: say what it ran on.
      const hw = hardware.get(`${r.tenant}/${r.service}`);
      const name = `${r.tenant}/${r.service}` + (hw ? ` (ran on ${hw.split(" (")[0]})` : "");
      serviceLabels.set(name, r);
      svc.set(name, (svc.get(name) || 0) + r.spend_rate_usd_h);
      const u = util.get(r.gpu_model) || { g: 0, u: 0 };
      u.g += r.gpu_seconds; u.u += r.util_avg * r.gpu_seconds; util.set(r.gpu_model, u);
    }
    const sorted = [...svc.entries()].sort((a, b) => a[1] - b[1]);
    react("chart-service", [{ type: "bar", orientation: "h", name: "USD/h", x: sorted.map((e) => e[1]), y: sorted.map((e) => e[0]),
      text: sorted.map((e) => e[0]), textposition: "inside", insidetextanchor: "start", cliponaxis: false,
      marker: { color: sorted.map((e) => L.colorOf(e[0].split("/")[0])) }, hovertemplate: "%{y}: $%{x:.2f}/h<extra></extra>" }]);
    const chart = document.getElementById("chart-service");
    chart.dataset.services = sorted.length;
    const models = [...util.keys()].sort();
    react("chart-util", [{ type: "bar", name: "utilization %", x: models, y: models.map((m) => util.get(m).u / util.get(m).g * 100),
      marker: { color: L.cssVar("--ok") } }]);
  }

  function drawAlerts() {
    const items = [...state.alerts.values()].sort((a, b) => (b.emitted_at || b.starts_at) - (a.emitted_at || a.starts_at)).slice(0, 50);
    const render = (ul, list) => {
      if (!list.length) {
        ul.replaceChildren(el("li", { className: "muted" }, "no alerts for this view: rules are made under Manage"));
        return;
      }
      ul.replaceChildren(...list.map((a) => el("li", { className: a.state },
        `${a.state === "firing" ? "▲" : "▼"} ${L.when(a.emitted_at || a.starts_at)} ${a.rule_name || a.rule_kind || "alert"} — `,
        `${a.tenant || ""}${a.service ? "/" + a.service : ""}: ${a.summary || ""}`)));
    };
    render(document.getElementById("alerts"), items);
    if (state.view === "service") render(document.getElementById("svc-alerts"), items);
  }

  // ---- the per-service drill-down ----------------------------------------------------------------
  function drawServiceHeader() {
    const t = state.filter.tenant, s = state.filter.service;
    document.getElementById("svc-title").replaceChildren(
      s ? `Service ${t ? t + "/" : ""}${s}` : "Pick a service (the service filter above, or a bar of the services chart)");
    loadServiceRec();
  }
  function drawService() {
    const spend = timeSeries("svc-rate", (r) => [rateOf(r)], () => "spend rate");
    const idle = timeSeries("svc-idle", (r) => [idleOf(r)], () => "idle waste");
    react("chart-svc-spend", [...lines(spend, () => state.filter.tenant || L.cssVar("--accent")),
      ...lines(idle, () => L.cssVar("--warn"), { fill: "tozeroy" })]);
    const gpus = new Map();
    for (const r of lastLive()) {
      const k = `${r.region} ${r.gpu_model}`;
      gpus.set(k, (gpus.get(k) || 0) + r.gpu_seconds / r.window_s);
    }
    const gk = [...gpus.keys()].sort();
    react("chart-svc-gpus", [{ type: "bar", name: "GPUs", x: gk, y: gk.map((k) => gpus.get(k)), marker: { color: state.filter.tenant ? L.colorOf(state.filter.tenant) : L.cssVar("--accent") } }]);
    // Utilization distribution over the range: aligned windows only (hopping windows overlap).
    const bands = new Array(10).fill(0);
    for (const w of state.series.values()) for (const r of w.values()) {
      if (r.window_start % r.window_s) continue;
      bands[Math.min(9, Math.floor(r.util_avg * 10))] += 1;
    }
    react("chart-svc-util", [{ type: "bar", name: "windows", x: bands.map((_, i) => `${i * 10}–${i * 10 + 10}`), y: bands,
      marker: { color: L.cssVar("--accent") } }]);
  }

  // ---- history, then live --------------------------------------------------------------------------
  function query(extra = {}) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries({ ...state.filter, ...extra })) if (v != null) p.set(k, v);
    return p.toString();
  }
  async function loadHistory() {
    const gen = state.generation;
    const q = query({ window_s: state.res, since: state.since, until: state.until ?? undefined, limit: 50000 });
    state.historyRequests.push(q);
    const res = await api(`/api/history?${q}`);
    if (gen !== state.generation || !res.ok) return;
    for (const r of res.data) addHistory(r);
  }
  function reload() {
    state.generation += 1;
    state.series.clear(); state.live.clear(); state.alerts.clear(); state.points = 0;
    loadHistory();
    subscribe();
    loadRecommendations();
    loadReconciliation();
    loadBudgets();
    loadForecast();
    state.dirty = true;
  }

  async function loadOptions() {
    const res = await api("/api/latest");
    if (res.ok) for (const r of res.data) learn(r);
  }

  // ---- recommendations -----------------------------------------------------------------------------
  const svcHref = (r) => urlFor({ view: "service", tenant: r.tenant, service: r.service });
  function recRows(rows) {
    return rows.map((r) => {
      const name = el("a", { href: svcHref(r), dataset: { nav: "1" } }, `${r.tenant}/${r.service}`);
      const nameCell = el("span", {}, name, r.hardware ? el("span", { className: "tag", title: "what it really ran on; priced as " + r.gpu_models.join(", ") }, `ran on ${r.hardware}`) : null);
      const now = el("span", { title: r.current_basis }, usd(r.spend_rate_usd_h), el("small", { className: "basis" }, "metered"));
      if (r.status !== "ok") {
        const ask = r.status === "model_unknown"
          ? el("button", { type: "button", className: "ask", onclick: (e) => modelForm(e.target.closest("td"), r) }, "set model size") : null;
        return [nameCell, num(r.demand_tokens_per_s), now, r.current_usd_per_million_tokens != null ? usd(r.current_usd_per_million_tokens) : "–",
          el("span", { className: "muted" }, r.message, " ", ask), "–", "–", "–"];
      }
      return [nameCell, num(r.demand_tokens_per_s), now, usd(r.current_usd_per_million_tokens),
        el("span", { title: r.best_reason }, r.best_alternative), usd(r.best_usd_per_hour),
        r.savings_usd_per_month > 0 ? el("strong", { className: "good" }, usd(r.savings_usd_per_month, 0))
          : el("span", { className: "muted", title: `the alternative would cost ${usd(-r.savings_usd_per_month, 0)} more a month` }, "none: the current fleet is cheaper"),
        el("small", { className: "basis" }, r.best_basis)];
    });
  }
  const REC_HEAD = ["service", "demand tok/s", "now $/h", "now $/1M tok", "best alternative (same demand)", "its $/h", "saves / month", "basis of the alternative"];
  const hardware = new Map();  // tenant/service -> what it really ran on, where that differs
  async function loadRecommendations() {
    const box = document.getElementById("recommendations");
    const res = await api(`/api/recommendations/live?${query()}`);
    if (res.ok) for (const r of res.data) if (r.hardware) hardware.set(`${r.tenant}/${r.service}`, r.hardware);
    if (!res.ok) { box.textContent = "not available: " + (res.data?.detail || res.status); return; }
    if (!res.data.length) { box.textContent = "no live services in the last hour for this view: start the simulator or an agent"; return; }
    box.classList.remove("muted");
    box.replaceChildren(table(REC_HEAD, recRows(res.data), { className: "recs" }),
      el("p", { className: "muted small" }, "Now: metered spend of the current fleet while it served the demand measured from the stream. " +
        "Alternative: the cheapest catalog fleet sized for that same demand; saves / month = (now $/h − its $/h) × 730."));
  }
  async function loadServiceRec() {
    const box = document.getElementById("svc-rec");
    if (!state.filter.service) { box.textContent = "pick a service"; return; }
    const res = await api(`/api/recommendations/live?${query()}`);
    if (!res.ok || !res.data.length) { box.textContent = "no usage of this service in the last hour"; return; }
    box.classList.remove("muted");
    box.replaceChildren(table(REC_HEAD, recRows(res.data), { className: "recs" }),
      ...res.data.filter((r) => r.best_reason).map((r) => el("p", { className: "small" }, r.best_reason)));
  }

  // Asks for the model a service serves where nobody said (PUT /api/services/model).
  function modelForm(cell, r) {
    const fields = [["params", "parameters (e.g. 8e9)"], ["precision", "precision", "bf16"], ["prompt_tokens", "prompt tokens", "512"],
      ["output_tokens", "output tokens", "256"], ["n_layers", "layers"], ["n_kv_heads", "KV heads"], ["head_dim", "head dim"]];
    const form = el("form", { className: "inline-form", novalidate: true });
    for (const [name, label, value] of fields) {
      form.appendChild(el("label", {}, label, " ", el("input", { name, value: value || "", size: 8 }), el("span", { className: "field-error", dataset: { field: name } })));
    }
    const general = el("span", { className: "field-error", dataset: { field: "" } });
    form.append(el("button", {}, "save"), general);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = { tenant: r.tenant, service: r.service };
      for (const [name] of fields) {
        const v = form.elements[name].value.trim();
        if (v !== "") body[name] = name === "precision" ? v : Number(v);
      }
      const res = await api("/api/services/model", { method: "PUT", body });
      if (window.gpucostForms.showErrors(form, res)) loadRecommendations();
    });
    cell.replaceChildren(form);
  }

  // ---- the spend forecast (Holt-Winters with daily seasonality, back-tested) ------------------------
  async function loadForecast() {
    const box = document.getElementById("forecast");
    const res = await api(`/api/forecast?${query()}`);
    if (!res.ok) { box.textContent = "not available: " + (res.data?.detail || res.status); return; }
    const f = res.data, h = f.hourly;
    const budgets = ((await api("/api/rules?kind=budget")).data || [])
      .filter((r) => r.params.period === "month" && r.enabled && (!state.filter.tenant || r.tenant === state.filter.tenant));
    const budget = budgets.length && (state.filter.tenant || budgets.length === 1) ? budgets.reduce((a, r) => a + r.params.limit_usd, 0) : null;
    const fig = (label, d, extra) => el("div", { className: "kpi" }, el("div", { className: "label" }, label),
      el("div", { className: "value" }, usd(d.projected_usd)),
      el("div", { className: "unit" }, `95 % bounds ${usd(d.low_usd)} – ${usd(d.high_usd)}; spent so far ${usd(d.spent_usd)}`), extra);
    const vsBudget = budget != null ? el("div", { className: "unit" + (f.month.projected_usd > budget ? " over" : "") },
      `monthly budget ${usd(budget)}: projected ${Math.round(f.month.projected_usd / budget * 100)} %`) : null;
    const bt = f.backtest_mape_pct != null
      ? `back-test: each of the last ${f.backtest.length} day(s) forecast from the hours before it; mean absolute error of the day's total ${f.backtest_mape_pct.toFixed(1)} %`
      : "back-test: needs at least three days of history (two to learn the season, one to check)";
    box.classList.remove("muted");
    box.replaceChildren(el("div", { className: "kpis inline" }, fig("today (UTC)", f.day), fig("this month (UTC)", f.month, vsBudget)),
      el("p", { className: "small muted" }, `${f.method}; ${f.history_hours} h of history from ${f.source}. ${bt}.`));
    const hx = h.history_usd.map((_, i) => new Date((h.history_from + i * 3600) * 1000));
    const fx = h.forecast_usd.map((_, i) => new Date((h.forecast_from + i * 3600) * 1000));
    react("chart-forecast", [
      { type: "scatter", mode: "lines", name: "spent per hour", x: hx, y: h.history_usd, line: { color: L.cssVar("--accent") } },
      { type: "scatter", mode: "lines", name: "forecast low (2.5 %)", x: fx, y: h.forecast_low_usd, line: { width: 0 }, showlegend: false },
      { type: "scatter", mode: "lines", name: "forecast high (97.5 %)", x: fx, y: h.forecast_high_usd, fill: "tonexty", line: { width: 0 },
        fillcolor: "rgba(245,165,36,0.2)", showlegend: false },
      { type: "scatter", mode: "lines", name: "forecast", x: fx, y: h.forecast_usd, line: { color: L.cssVar("--warn"), dash: "dot" } },
    ]);
  }

  // ---- billed vs metered ---------------------------------------------------------------------------
  // Each part of the gap (billed - metered) as the API names it: the words in the UI are the
  // words in the code (api/reconcile.py).
  const GAP_PARTS = [
    ["commitment_discount_usd", "commitment discount"], ["spot_discount_usd", "spot discount"],
    ["negotiated_discount_usd", "negotiated discount"], ["credits_usd", "credits"],
    ["tax_and_adjustments_usd", "tax and adjustments"], ["usage_without_bill_usd", "usage without a bill line"],
    ["awaiting_bill_usd", "awaiting the bill"], ["bill_without_usage_usd", "bill lines without usage"],
    ["partial_hours_usd", "partial hours"], ["unexplained_usd", "unexplained"],
  ];
  async function loadReconciliation() {
    const res = await api("/api/reconciliation?days=7");
    if (!res.ok) return;
    const rows = res.data.filter((r) => !state.filter.tenant || r.tenant === state.filter.tenant);
    const x = rows.map((r) => `${r.tenant} ${r.day.slice(5)}`);
    react("chart-reconcile", [
      { type: "bar", name: "metered (usage x catalog)", x, y: rows.map((r) => r.metered_usd), marker: { color: L.cssVar("--accent") } },
      { type: "bar", name: "billed (effective cost)", x, y: rows.map((r) => r.billed_usd), marker: { color: L.cssVar("--warn") } },
      { type: "bar", name: "billed at list price", x, y: rows.map((r) => r.list_usd), marker: { color: L.cssVar("--muted") }, visible: "legendonly" },
    ]);
    const box = document.getElementById("reconcile-breakdown");
    if (!rows.length) { box.replaceChildren("the gap, explained: no days to reconcile yet"); return; }
    // Only the parts that are not zero on some row, newest day first.
    const parts = GAP_PARTS.filter(([k]) => rows.some((r) => Math.abs(r.breakdown[k]) >= 0.005));
    const sorted = [...rows].sort((a, b) => (b.day > a.day) - (b.day < a.day) || a.tenant.localeCompare(b.tenant));
    box.classList.remove("muted");
    box.replaceChildren(
      el("p", { className: "small muted" }, "The gap, explained: each part is what it adds to billed − metered, and they sum to it. " +
        "Billed is the effective cost (commitments amortised), credits, tax and adjustments included; metered is usage at catalog prices. " +
        "An account-wide charge that no tag or account rule assigns is the tenant \u201cunassigned\u201d\u2019s."),
      table(["tenant", "day", "metered", "billed", "billed − metered", ...parts.map(([, name]) => name)],
        sorted.map((r) => [r.tenant, r.day, usd(r.metered_usd), usd(r.billed_usd), usd(r.difference_usd),
          ...parts.map(([k]) => usd(r.breakdown[k]))]), { className: "reconcile" }));
  }

  // ---- budgets and quotas against current use ------------------------------------------------------
  async function monthSpend(tenant) {
    const start = new Date(); start.setUTCDate(1); start.setUTCHours(0, 0, 0, 0);
    const since = Math.floor(start.getTime() / 1000);
    for (const w of [86400, 3600, 60]) {
      const res = await api(`/api/history?${new URLSearchParams({ tenant, window_s: w, since, limit: 50000 })}`);
      if (!res.ok) return null;
      const rows = res.data.filter((r) => r.window_start % r.window_s === 0);
      if (rows.length) return { usd: rows.reduce((a, r) => a + r.spend_usd, 0), from: w };
    }
    return { usd: 0, from: 60 };
  }
  async function loadBudgets() {
    const box = document.getElementById("budgets");
    const res = await api("/api/rules");
    if (!res.ok) { box.textContent = "not available"; return; }
    const rules = res.data.filter((r) => (r.kind === "budget" && r.params.period === "month") || (r.kind === "gpu_quota" && r.gpu_model))
      .filter((r) => !state.filter.tenant || r.tenant === state.filter.tenant);
    if (!rules.length) { box.textContent = "no monthly budgets or GPU quotas yet: set them under Manage"; return; }
    const inUse = new Map();
    for (const r of lastLive()) {
      const k = `${r.tenant}|${r.gpu_model}`;
      inUse.set(k, (inUse.get(k) || 0) + r.gpu_seconds / r.window_s);
    }
    const rows = [];
    for (const r of rules) {
      if (r.kind === "budget") {
        const m = await monthSpend(r.tenant);
        const share = m ? m.usd / r.params.limit_usd : null;
        rows.push([r.tenant, "monthly budget", usd(r.params.limit_usd), m ? usd(m.usd) : "–", bar(share), r.enabled ? "on" : "off"]);
      } else {
        const used = inUse.get(`${r.tenant}|${r.gpu_model}`) || 0;
        rows.push([r.tenant, `max ${r.gpu_model} GPUs`, num(r.params.max_gpus, 1), num(used, 1), bar(used / r.params.max_gpus), r.enabled ? "on" : "off"]);
      }
    }
    box.classList.remove("muted");
    box.replaceChildren(table(["tenant", "setting", "limit", "current use", "", "alert rule"], rows));
  }
  function bar(share) {
    if (share == null || !isFinite(share)) return "–";
    const pct = Math.round(share * 100);
    return el("span", { className: "meter" + (share >= 1 ? " over" : share >= 0.8 ? " near" : ""), title: pct + " %" },
      el("span", { className: "fill", style: `width:${Math.min(100, pct)}%` }), el("span", { className: "pct" }, pct + " %"));
  }

  // ---- the socket ----------------------------------------------------------------------------------
  let ws = null, backoff = 500, reconnects = 0;
  function subscribe() {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(JSON.stringify({ op: "subscribe", id: "aggregates", channel: "aggregates", filter: state.filter }));
    ws.send(JSON.stringify({ op: "subscribe", id: "alerts", channel: "alerts", filter: state.filter }));
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const key = L.getKey();
    ws = new WebSocket(`${proto}://${location.host}/ws${key ? "?api_key=" + encodeURIComponent(key) : ""}`);
    const conn = document.getElementById("conn");
    ws.onopen = () => {
      if (reconnects++ > 0) loadHistory();  // windows emitted while away
      backoff = 500;
      conn.textContent = "live"; conn.className = "pill on";
      subscribe();
    };
    ws.onmessage = (ev) => {
      state.messages += 1;
      const msg = JSON.parse(ev.data);
      if (msg.type === "aggregate") addLive(msg.data);
      else if (msg.type === "snapshot" && msg.channel === "aggregates") msg.data.forEach(addLive);
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

  // Without a valid key the handshake is refused, which a browser cannot tell from a network
  // error: ask the API who we are first, and say what is missing instead of retrying.
  let keyRefused = false;
  function showPrompt() {
    if (keyRefused) return;
    keyRefused = true;
    L.forgetKey();
    document.getElementById("auth").hidden = false;
    document.getElementById("auth-why").textContent = L.getKey() ? "The key given was not accepted (revoked or mistyped)." : "";
    const conn = document.getElementById("conn");
    conn.textContent = "no key"; conn.className = "pill off";
    if (ws) ws.close();
  }
  window.addEventListener("gpucost-unauthorized", showPrompt);
  async function checkKey() {
    const res = await fetch("/api/keys/me", { headers: L.authHeaders() }).catch(() => null);
    if (res && res.status === 401) { showPrompt(); return false; }
    if (res && res.ok) window.gpucostMe = await res.json();
    return true;
  }
  document.getElementById("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    L.setKey(document.getElementById("auth-key").value.trim(), document.getElementById("auth-remember").checked);
    location.reload();
  });

  // ---- theme ---------------------------------------------------------------------------------------
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "light" ? "dark" : "light";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("gpucost_theme", next);  // a preference, not a secret
    loadReconciliation();
    state.dirty = true;
  });

  state.drawMs = [];  // the last draws' durations, for the frame-time benchmark (bench/dashboard_frames.py)
  // Data arrives in windows of 10 s or more: drawing at most once a second keeps every other frame
  // free for the person scrolling or typing (one draw of a thousand keys takes tens of ms).
  const DRAW_EVERY_MS = 1000;
  let lastDraw = -Infinity;
  function frame(t) {
    if (state.dirty && t - lastDraw >= DRAW_EVERY_MS) {
      lastDraw = t;
      const t0 = performance.now();
      draw();
      state.drawMs.push(performance.now() - t0);
      if (state.drawMs.length > 2000) state.drawMs.splice(0, 1000);
    }
    requestAnimationFrame(frame);
  }

  apply();
  checkKey().then((ok) => {
    if (!ok) return;
    window.dispatchEvent(new CustomEvent("gpucost-ready"));
    loadOptions();
    connect();
    requestAnimationFrame(frame);
  });
  setInterval(() => { if (!keyRefused) { loadRecommendations(); loadBudgets(); loadOptions(); loadForecast(); } }, 60000);
  setInterval(() => { if (!keyRefused) loadReconciliation(); }, 60000);
  // Long ranges are drawn from rollups, which the socket does not carry: re-read them.
  setInterval(() => { if (!keyRefused && state.res > 60 && state.until == null) { state.generation += 1; state.series.clear(); loadHistory(); } }, 60000);
})();
