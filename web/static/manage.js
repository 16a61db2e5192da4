// gpucost dashboard, the management views: alert rules, per-tenant budgets and GPU quotas (each
// backed by its alert rule), webhooks with test deliveries, API keys (admin), and the webhook log.
// Forms are validated by the API itself (the same pydantic schema as any client): a 422's errors
// are shown next to the field they name.
"use strict";
(() => {
  const L = window.gpucostLib;
  const { el, table, api, usd, num, when } = L;

  // ---- errors next to their field ------------------------------------------------------------------
  // A form's fields carry name="params.limit_usd"; an error span data-field="params.limit_usd" sits
  // beside each. FastAPI's 422 detail names the field by its loc (["body", "params", "limit_usd"]).
  function showErrors(form, res) {
    for (const s of form.querySelectorAll(".field-error")) s.textContent = "";
    for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
    if (res.ok) return true;
    const detail = res.data && res.data.detail;
    const list = Array.isArray(detail) ? detail : [{ loc: [], msg: typeof detail === "string" ? detail : `error ${res.status}` }];
    for (const d of list) {
      let loc = (d.loc || []).filter((p) => p !== "body");
      let span = null;
      // A rule's params are checked by the rule's own validator, whose errors name the parameter
      // alone (["max_gpus"]): look for it under params. too.
      const find = (l) => form.querySelector(`.field-error[data-field="${CSS.escape(l.join("."))}"]`);
      if (loc.length && !find(loc) && find(["params", ...loc])) loc = ["params", ...loc];
      while (loc.length && !span) {  // the deepest field the form has
        span = find(loc);
        if (!span) loc = loc.slice(0, -1);
      }
      span = span || form.querySelector('.field-error[data-field=""]');
      const msg = (d.msg || "").replace(/^Value error, /, "");
      span.textContent = span.textContent ? span.textContent + "; " + msg : msg;
      const input = form.querySelector(`[name="${CSS.escape(loc.join("."))}"]`);
      if (input) input.setAttribute("aria-invalid", "true");
    }
    return false;
  }
  window.gpucostForms = { showErrors };

  function field(label, name, input, hint) {
    input.name = name;
    input.id = "fld-" + name.replace(/\W/g, "-") + "-" + Math.random().toString(36).slice(2, 7);
    return el("div", { className: "field" }, el("label", { htmlFor: input.id }, label), input,
      hint ? el("small", { className: "muted" }, hint) : null, el("span", { className: "field-error", dataset: { field: name }, role: "alert" }));
  }
  const input = (value, attrs = {}) => el("input", { value: value == null ? "" : String(value), ...attrs });
  const select = (value, options) => {
    const s = el("select", {}, options.map(([v, label]) => el("option", { value: v }, label ?? v)));
    s.value = value ?? options[0][0];
    return s;
  };

  // ---- alert rules -----------------------------------------------------------------------------------
  const PARAMS = {
    budget: [["period", "period", ["1h", "1d", "month"]], ["limit_usd", "limit (USD)"], ["warn_at", "warn at shares", null, "comma separated, e.g. 0.5, 0.9"]],
    burn_rate: [["horizon", "horizon", ["day", "month"]], ["limit_usd", "limit (USD)"], ["lookback_s", "lookback (s)"], ["hysteresis", "hysteresis"]],
    idle_waste: [["threshold", "idle share threshold (0..1)"], ["for_s", "for (s)"], ["min_spend_usd", "min spend (USD)"]],
    anomaly: [["factor", "factor over baseline"], ["baseline_s", "baseline (s)"], ["min_baseline_windows", "min baseline windows"], ["min_rate_usd_h", "min rate (USD/h)"]],
    gpu_quota: [["max_gpus", "max GPUs"], ["for_s", "for (s)"]],
  };
  function ruleForm(rule) {
    const box = document.getElementById("rule-form-box");
    const form = el("form", { className: "form", id: "rule-form", novalidate: true });
    const kind = select(rule?.kind || "budget", Object.keys(PARAMS).map((k) => [k, k.replace("_", " ")]));
    const paramsBox = el("div", { className: "params" });
    const drawParams = () => {
      paramsBox.replaceChildren(...PARAMS[kind.value].map(([name, label, choices, hint]) => {
        const v = rule && rule.kind === kind.value ? rule.params[name] : undefined;
        const inp = choices ? select(v, choices.map((c) => [c])) : input(Array.isArray(v) ? v.join(", ") : v);
        return field(label, "params." + name, inp, hint);
      }));
    };
    kind.addEventListener("change", drawParams);
    drawParams();
    const enabled = el("input", { type: "checkbox", checked: rule ? rule.enabled : true });
    form.append(
      el("h3", {}, rule ? `Edit rule ${rule.name}` : "New alert rule"),
      field("name", "name", input(rule?.name)), field("kind", "kind", kind),
      field("tenant", "tenant", input(rule?.tenant, { disabled: !!rule }), rule ? "a rule stays with its tenant" : "empty: every tenant (admin)"),
      field("service", "service", input(rule?.service)), field("region", "region", input(rule?.region)),
      field("GPU model", "gpu_model", input(rule?.gpu_model)),
      field("model version", "model_version", input(rule?.model_version), "e.g. a canary: only its spend counts"),
      paramsBox, field("enabled", "enabled", enabled),
      el("div", { className: "actions" }, el("button", { type: "submit" }, rule ? "save" : "create rule"),
        rule ? el("button", { type: "button", onclick: () => ruleForm(null) }, "cancel") : null,
        el("span", { className: "field-error", dataset: { field: "" }, role: "alert" })));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = form.elements;
      const body = { name: f.name.value.trim(), kind: kind.value, enabled: enabled.checked, params: {} };
      for (const k of ["tenant", "service", "region", "gpu_model", "model_version"]) if (f[k].value.trim()) body[k] = f[k].value.trim();
      if (rule) body.tenant = rule.tenant;
      for (const [name] of PARAMS[kind.value]) {
        const v = f["params." + name].value.trim();
        if (v === "") continue;
        if (name === "warn_at") body.params[name] = v.split(",").map((x) => Number(x.trim()));
        else body.params[name] = isNaN(Number(v)) ? v : Number(v);
      }
      const res = await api(rule ? `/api/rules/${encodeURIComponent(rule.id)}` : "/api/rules", { method: rule ? "PUT" : "POST", body });
      if (showErrors(form, res)) { ruleForm(null); loadRules(); }
    });
    box.replaceChildren(form);
  }
  const paramText = (p) => Object.entries(p).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("/") : v}`).join(" ");
  async function loadRules() {
    const box = document.getElementById("rules-list");
    const res = await api("/api/rules");
    if (!res.ok) { box.textContent = "not available"; return; }
    if (!res.data.length) box.replaceChildren(el("p", { className: "muted" }, "no rules yet: create one below (gpucost up makes demo rules for the simulated tenants)"));
    else box.replaceChildren(table(["name", "kind", "scope", "parameters", "enabled", ""], res.data.map((r) => [
      r.name, r.kind, [r.tenant || "every tenant", r.service, r.region, r.gpu_model, r.model_version].filter(Boolean).join(" / "), paramText(r.params),
      el("input", { type: "checkbox", checked: r.enabled, "aria-label": `enable ${r.name}`, onchange: async (e) => {
        const spec = { name: r.name, kind: r.kind, tenant: r.tenant, service: r.service, region: r.region, gpu_model: r.gpu_model,
          model_version: r.model_version, group_by: r.group_by, params: r.params, enabled: e.target.checked };
        const res2 = await api(`/api/rules/${encodeURIComponent(r.id)}`, { method: "PUT", body: spec });
        if (!res2.ok) e.target.checked = !e.target.checked;
      } }),
      el("span", {}, el("button", { type: "button", onclick: () => ruleForm(r) }, "edit"), " ",
        el("button", { type: "button", className: "danger", onclick: async () => {
          if (!confirm(`Delete rule ${r.name}?`)) return;
          await api(`/api/rules/${encodeURIComponent(r.id)}`, { method: "DELETE" }); loadRules();
        } }, "delete")),
    ]), { className: "rules" }));
  }

  // ---- budgets and quotas: first-class settings, each stored as its alert rule ----------------------
  function budgetForm() {
    const box = document.getElementById("budget-form-box");
    const form = el("form", { className: "form", id: "budget-form", novalidate: true });
    const what = select("budget", [["budget", "monthly budget (USD)"], ["quota", "maximum GPUs of one GPU model"]]);
    const gpu = field("GPU model", "gpu_model", input(""), "for a GPU quota");
    const limit = field("limit", "limit", input(""));
    form.append(el("p", { className: "muted" }, "A budget is a monthly budget rule (warnings at 50/75/90 %), a quota a GPU-quota rule grouped by GPU model; both show against current use on the overview."),
      field("tenant", "tenant", input("")), field("setting", "what", what), gpu, limit,
      el("div", { className: "actions" }, el("button", { type: "submit" }, "save setting"), el("span", { className: "field-error", dataset: { field: "" }, role: "alert" })));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = form.elements, tenant = f.tenant.value.trim(), value = Number(f.limit.value.trim() || NaN);
      const isBudget = what.value === "budget";
      const body = isBudget
        ? { name: `budget: ${tenant} monthly`, kind: "budget", tenant, params: { period: "month", limit_usd: value } }
        : { name: `quota: ${tenant} ${f.gpu_model.value.trim()}`, kind: "gpu_quota", tenant, gpu_model: f.gpu_model.value.trim() || undefined,
          group_by: ["tenant", "gpu_model"], params: { max_gpus: value } };
      if (!tenant) { showErrors(form, { ok: false, data: { detail: [{ loc: ["body", "tenant"], msg: "a budget belongs to one tenant" }] } }); return; }
      if (!isBudget && !body.gpu_model) { showErrors(form, { ok: false, data: { detail: [{ loc: ["body", "gpu_model"], msg: "a quota is per GPU model" }] } }); return; }
      // One setting per tenant (and GPU model): replace the rule if there is one.
      const existing = (await api("/api/rules")).data?.find((r) => r.name === body.name);
      const res = await api(existing ? `/api/rules/${encodeURIComponent(existing.id)}` : "/api/rules", { method: existing ? "PUT" : "POST", body });
      // The rule's own field names map back onto the form's.
      if (!res.ok && Array.isArray(res.data?.detail)) for (const d of res.data.detail) {
        const last = d.loc[d.loc.length - 1];
        if (last === "limit_usd" || last === "max_gpus") d.loc = ["body", "limit"];
      }
      if (showErrors(form, res)) { form.reset(); loadRules(); }
    });
    box.replaceChildren(form);
  }

  // ---- webhooks -------------------------------------------------------------------------------------
  function hookForm(hook) {
    const box = document.getElementById("hook-form-box");
    const form = el("form", { className: "form", id: "hook-form", novalidate: true });
    const fmt = select(hook?.format || "gpucost", [["gpucost"], ["alertmanager", "Alertmanager v4"], ["slack", "Slack"]]);
    const enabled = el("input", { type: "checkbox", checked: hook ? hook.enabled : true });
    const secretOut = el("p", { className: "secret", id: "hook-secret" });
    form.append(el("h3", {}, hook ? `Edit webhook ${hook.name}` : "New webhook"),
      field("name", "name", input(hook?.name)), field("URL", "url", input(hook?.url, { size: 50 })),
      field("format", "format", fmt), field("tenant", "tenant", input(hook?.tenant, { disabled: !!hook }), "empty: every tenant (admin)"),
      field("only rules (ids)", "rule_ids", input(hook?.rule_ids?.join(", ")), "comma separated; empty: every rule"),
      field("enabled", "enabled", enabled),
      el("div", { className: "actions" }, el("button", { type: "submit" }, hook ? "save" : "create webhook"),
        hook ? el("button", { type: "button", onclick: () => hookForm(null) }, "cancel") : null,
        el("span", { className: "field-error", dataset: { field: "" }, role: "alert" })), secretOut);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = form.elements;
      const ids = f.rule_ids.value.split(",").map((x) => x.trim()).filter(Boolean);
      const body = { name: f.name.value.trim(), url: f.url.value.trim(), format: fmt.value, enabled: enabled.checked, rule_ids: ids.length ? ids : null };
      if (!hook && f.tenant.value.trim()) body.tenant = f.tenant.value.trim();
      const res = await api(hook ? `/api/webhooks/${encodeURIComponent(hook.id)}` : "/api/webhooks", { method: hook ? "PATCH" : "POST", body });
      if (!showErrors(form, res)) return;
      loadHooks();
      if (!hook) {
        form.reset();
        secretOut.replaceChildren("Signing secret (shown once; receivers verify the webhook-signature header with it): ", el("code", {}, res.data.secret));
      } else hookForm(null);
    });
    box.replaceChildren(form);
  }
  async function loadHooks() {
    const box = document.getElementById("hooks-list");
    const res = await api("/api/webhooks");
    if (!res.ok) { box.textContent = "not available"; return; }
    if (!res.data.length) { box.replaceChildren(el("p", { className: "muted" }, "no webhooks yet: create one below")); return; }
    box.replaceChildren(table(["name", "URL", "format", "tenant", "enabled", ""], res.data.map((h) => [
      h.name, h.url, h.format, h.tenant || "every tenant", h.enabled ? "yes" : "no",
      el("span", {}, el("button", { type: "button", onclick: () => hookForm(h) }, "edit"), " ",
        el("button", { type: "button", className: "test", onclick: async (e) => {
          const res2 = await api(`/api/webhooks/${encodeURIComponent(h.id)}/test`, { method: "POST" });
          e.target.textContent = res2.ok ? "test queued ✓" : "test failed";
        } }, "send test"), " ",
        el("a", { href: "/webhooks/log", dataset: { nav: "1" } }, "log"), " ",
        el("button", { type: "button", className: "danger", onclick: async () => {
          if (!confirm(`Delete webhook ${h.name} and its delivery log?`)) return;
          await api(`/api/webhooks/${encodeURIComponent(h.id)}`, { method: "DELETE" }); loadHooks();
        } }, "delete")),
    ]), { className: "hooks" }));
  }

  // ---- API keys (admin) -----------------------------------------------------------------------------
  function keyForm() {
    const box = document.getElementById("key-form-box");
    const form = el("form", { className: "form", id: "key-form", novalidate: true });
    const admin = el("input", { type: "checkbox" });
    const out = el("p", { className: "secret", id: "new-key" });
    form.append(field("tenant", "tenant", input("")), field("admin key (no tenant)", "admin", admin), field("name", "name", input("")),
      el("div", { className: "actions" }, el("button", { type: "submit" }, "create key"), el("span", { className: "field-error", dataset: { field: "" }, role: "alert" })), out);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = form.elements;
      const body = { admin: admin.checked, name: f.name.value.trim() };
      if (f.tenant.value.trim()) body.tenant = f.tenant.value.trim();
      const res = await api("/api/keys", { method: "POST", body });
      if (!showErrors(form, res)) return;
      form.reset();
      out.replaceChildren("New key (shown once): ", el("code", {}, res.data.key));
      loadKeys();
    });
    box.replaceChildren(form);
  }
  async function loadKeys() {
    const card = document.getElementById("keys-card");
    const me = window.gpucostMe;
    card.hidden = !(me && me.admin);
    if (card.hidden) return;
    const res = await api("/api/keys");
    const box = document.getElementById("keys-list");
    if (!res.ok) { box.textContent = "not available"; return; }
    box.replaceChildren(table(["key id", "tenant", "name", "created", "state", ""], res.data.map((k) => [
      k.key_id, k.admin ? "admin" : k.tenant, k.name, k.created_at ? k.created_at.slice(0, 19).replace("T", " ") : "",
      k.revoked ? "revoked" : "active",
      k.revoked || k.key_id === me.key_id ? "" : el("button", { type: "button", className: "danger", onclick: async () => {
        if (!confirm(`Revoke key ${k.key_id}? Its open dashboards and sockets lose access.`)) return;
        await api(`/api/keys/${encodeURIComponent(k.key_id)}`, { method: "DELETE" }); loadKeys();
      } }, "revoke"),
    ]), { className: "keys" }));
  }

  // ---- the webhook log ------------------------------------------------------------------------------
  async function loadLog() {
    const box = document.getElementById("deliveries");
    const res = await api("/api/deliveries?limit=100");
    if (!res.ok) { box.textContent = "not available"; return; }
    if (!res.data.length) box.replaceChildren(el("p", { className: "muted" }, "nothing delivered yet: deliveries appear once a rule fires (or send a test from Manage)"));
    else box.replaceChildren(table(["created", "alert", "tenant", "state", "status", "attempts", "last answer", "webhook-id", ""], res.data.map((d) => {
      const details = el("div", { className: "attempts" });
      return [when(d.created_at), d.alert.rule_name || d.alert.rule_kind, d.tenant, d.state,
        el("span", { className: "status " + d.status }, d.status), String(d.attempts),
        d.last_status_code != null ? `HTTP ${d.last_status_code}` : d.last_error || "–", el("code", {}, d.webhook_id_header),
        el("span", {}, el("button", { type: "button", onclick: async (e) => {
          const r = await api(`/api/deliveries/${encodeURIComponent(d.id)}`);
          if (r.ok) details.replaceChildren(table(["attempt", "at", "answer", "took", "next try"], r.data.attempt_log.map((a) => [
            String(a.attempt), when(a.at), a.status_code != null ? `HTTP ${a.status_code}` : a.error || "–", `${num(a.duration_ms)} ms`,
            a.next_attempt_at ? when(a.next_attempt_at) : "–"])));
          e.target.remove();
        } }, "attempts"), details)];
    }), { className: "deliveries" }));
    const rec = await api("/api/receiver/log?limit=100");
    const rbox = document.getElementById("received");
    if (!rec.ok) { rbox.textContent = "not available"; return; }
    if (!rec.data.length) rbox.replaceChildren(el("p", { className: "muted" }, "the built-in receiver got nothing yet (gpucost up points a demo webhook at it)"));
    else rbox.replaceChildren(table(["at", "webhook-id", "signature", "answered", "payload type", "summary"], rec.data.map((r) => [
      when(r.at), el("code", {}, r.webhook_id_header), r.verified ? "valid ✓" : `invalid: ${r.error || ""}`, `HTTP ${r.answered}`,
      r.payload?.type || (r.payload?.version ? "alertmanager" : "–"), r.payload?.data?.summary || r.payload?.text || ""]), { className: "received" }));
  }

  // ---- view switching ------------------------------------------------------------------------------
  let timer = null;
  function onView(view) {
    clearInterval(timer);
    if (view === "manage") {
      loadRules(); ruleForm(null); budgetForm(); loadHooks(); hookForm(null); loadKeys(); keyForm();
    } else if (view === "webhooks") {
      loadLog();
      timer = setInterval(loadLog, 3000);
    }
  }
  let ready = false;
  window.addEventListener("gpucost-ready", () => { ready = true; onView(window.gpucost.view); });
  window.addEventListener("gpucost-view", (e) => { if (ready) onView(e.detail); });
})();
