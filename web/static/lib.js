// gpucost dashboard helpers shared by the views: DOM building from text only (a tenant or service
// name is data, never markup), the authenticated fetch, CSV export, tenant colours and the theme.
"use strict";
(() => {
  // ---- the API key: this tab only, unless the user asked to be remembered ---------------------
  const params = new URLSearchParams(location.search);
  let apiKey = params.get("api_key") || sessionStorage.getItem("gpucost_api_key") ||
    localStorage.getItem("gpucost_api_key") || "";
  if (params.get("api_key")) {
    sessionStorage.setItem("gpucost_api_key", apiKey);
    params.delete("api_key");  // out of the address bar, history and shared links
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
  }
  const forgetKey = () => {
    sessionStorage.removeItem("gpucost_api_key"); localStorage.removeItem("gpucost_api_key");
  };
  const setKey = (key, remember) => {
    sessionStorage.setItem("gpucost_api_key", key);
    if (remember) localStorage.setItem("gpucost_api_key", key); else localStorage.removeItem("gpucost_api_key");
  };

  // ---- DOM from text ------------------------------------------------------------------------------
  // el("td", {className: "x", onclick: f}, "text", childNode, ...): strings become text nodes.
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k in e && k !== "list" && k !== "type") e[k] = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function table(head, rows, opts = {}) {
    const t = el("table", { className: opts.className || "" });
    const tr = t.createTHead().insertRow();
    for (const h of head) tr.appendChild(el("th", {}, h));
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

  // ---- the API -------------------------------------------------------------------------------------
  const authHeaders = () => (apiKey ? { Authorization: `Bearer ${apiKey}` } : {});
  async function api(path, { method = "GET", body } = {}) {
    const headers = { ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      return { ok: false, status: 0, data: { detail: "the API cannot be reached" } };
    }
    let data = null;
    if (res.status !== 204) {
      const text = await res.text();
      try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
    }
    if (res.status === 401) window.dispatchEvent(new CustomEvent("gpucost-unauthorized"));
    return { ok: res.ok, status: res.status, data };
  }

  // ---- numbers -------------------------------------------------------------------------------------
  const usd = (v, digits) => v == null || !isFinite(v) ? "–" :
    (v < 0 ? "-$" : "$") + Math.abs(v).toLocaleString("en-US", { maximumFractionDigits: digits ?? (Math.abs(v) < 100 ? 2 : 0), minimumFractionDigits: digits ?? 0 });
  const num = (v, digits = 0) => v == null || !isFinite(v) ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: digits });
  const when = (ts) => ts ? new Date(ts * 1000).toLocaleString("en-GB", { hour12: false }) : "–";

  // ---- CSV of any chart's data ---------------------------------------------------------------------
  const csvCell = (v) => {
    let s = v instanceof Date ? v.toISOString() : v == null ? "" : String(v);
    if (/^[=+\-@\t\r]/.test(s) && isNaN(Number(s))) s = "'" + s;  // no formulas in a spreadsheet
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  function chartCsv(div) {
    const lines = [["series", "x", "y"].join(",")];
    for (const t of div.data || []) {
      const xs = t.orientation === "h" ? t.y : t.x, ys = t.orientation === "h" ? t.x : t.y;
      (xs || []).forEach((x, i) => lines.push([csvCell(t.name || ""), csvCell(x), csvCell(ys[i])].join(",")));
    }
    return lines.join("\n") + "\n";
  }
  function download(name, text) {
    const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: name });
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // ---- tenant colours: the same tenant has the same colour on every chart, across reloads -------
  const PALETTE = ["#4cc2ff", "#f5a524", "#3ddc97", "#ff6b9a", "#b78cff", "#ffd166", "#06d6a0", "#ef476f",
    "#8ecae6", "#fb8500", "#a3e635", "#e879f9"];
  // A tenant keeps the palette slot it first got (stored, like the theme: a preference, not data
  // worth hiding), so colours do not collide the way hashing 4 names into 12 slots would.
  const slots = (() => { try { return JSON.parse(localStorage.getItem("gpucost_colors") || "{}"); } catch (e) { return {}; } })();
  function colorOf(name) {
    name = String(name);
    if (!(name in slots)) {
      const used = new Set(Object.values(slots));
      let i = 0;
      while (used.has(i) && i < PALETTE.length) i++;
      slots[name] = i < PALETTE.length ? i : Object.keys(slots).length % PALETTE.length;
      try { localStorage.setItem("gpucost_colors", JSON.stringify(slots)); } catch (e) { /* private mode */ }
    }
    return PALETTE[slots[name]];
  }

  // ---- theme -----------------------------------------------------------------------------------------
  const storedTheme = localStorage.getItem("gpucost_theme");
  const theme = storedTheme || (matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark");
  document.documentElement.dataset.theme = theme;
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  window.gpucostLib = { el, table, api, authHeaders, usd, num, when, chartCsv, download, colorOf, cssVar,
    getKey: () => apiKey, setKey, forgetKey };
})();
