// The operations console (served by `payctl console` on loopback): every instance with its health,
// in-flight work and rate; payments per second and outcomes by code; a payment's trace; reconcile; drain
// with a typed confirmation. The console process holds the ops CURVE key and talks to the bus; this page
// talks only to it, with a header a cross-site page cannot send without the console's consent.
"use strict";

(function () {
  const W = window.WiPay;
  const HEADERS = { "X-WiPay-Console": "1" };
  let drainTarget = null;

  const api = (method, path, body) => W.call(method, path, HEADERS, body === undefined ? undefined : JSON.stringify(body));

  function uptime(seconds) {
    if (seconds < 120) return seconds + "s";
    if (seconds < 7200) return Math.floor(seconds / 60) + "m";
    return Math.floor(seconds / 3600) + "h" + Math.floor((seconds % 3600) / 60) + "m";
  }

  // ---- instances ----------------------------------------------------------------------------------
  async function refreshInstances() {
    const answer = await api("GET", "/api/instances");
    if (answer.status !== 200 || !answer.data || !Array.isArray(answer.data.instances)) {
      W.text("bus-state", "the console cannot be reached");
      return;
    }
    W.text("bus-state", answer.data.instances.length ? "" : "no instance heard yet");
    W.text("instances-at", "· " + new Date().toLocaleTimeString());
    const rows = W.$("instance-rows");
    rows.replaceChildren();
    for (const s of answer.data.instances) {
      const tr = document.createElement("tr");
      tr.dataset.service = s.service;
      tr.dataset.instance = s.instance;
      const health = s.draining ? "draining" : s.stale ? "silent" : s.healthy ? "healthy" : "unhealthy";
      const healthCell = W.el("td");
      healthCell.append(W.el("span", health, "status " + (health === "healthy" ? "succeeded" : health === "draining" ? "pending" : "error")));
      tr.append(W.el("td", s.service), W.el("td", s.instance), W.el("td", s.version), W.el("td", uptime(s.uptime_seconds)), healthCell,
        W.el("td", s.in_flight), W.el("td", s.recent_per_second), W.el("td", s.detail));
      const action = W.el("td");
      if (!s.draining) {
        const button = W.el("button", "Drain", "secondary");
        button.type = "button";
        button.dataset.drain = s.instance;
        button.addEventListener("click", () => askDrain(s));
        action.append(button);
      }
      tr.append(action);
      rows.append(tr);
    }
  }

  function askDrain(s) {
    drainTarget = s;
    W.text("drain-target", s.service + " " + s.instance);
    W.$("drain-confirm").value = "";
    W.message("drain-message", "");
    W.show("drain-panel", true);
    W.$("drain-confirm").focus();
  }

  async function drain() {
    if (!drainTarget) return;
    const confirm = W.$("drain-confirm").value.trim();
    if (confirm !== drainTarget.instance) {
      W.message("drain-message", "Type " + drainTarget.instance + " exactly to drain it.", "bad");
      return;
    }
    W.$("drain-button").disabled = true;
    const answer = await api("POST", "/api/drain", { service: drainTarget.service, instance: drainTarget.instance, confirm });
    W.$("drain-button").disabled = false;
    if (answer.status === 200 && answer.data) {
      W.message("drain-message", drainTarget.instance + " is draining (" + answer.data.in_flight + " in flight).", "ok");
      W.show("drain-panel", false);
      drainTarget = null;
      refreshInstances();
    } else {
      W.message("drain-message", "Not drained: " + W.errorText(answer), "bad");
    }
  }

  // ---- rates --------------------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  async function refreshRates() {
    const answer = await api("GET", "/api/rates");
    if (answer.status !== 200 || !answer.data || !Array.isArray(answer.data.seconds)) return;
    const seconds = answer.data.seconds.slice(-60);
    const max = Math.max(1, ...seconds.map((s) => s.payments + s.declined));
    const chart = W.$("rate-chart");
    chart.replaceChildren();
    seconds.forEach((s, i) => {
      const x = i * 10 + 1;
      const good = (s.payments / max) * 118;
      const bad = (s.declined / max) * 118;
      for (const [height, y, cls] of [[good, 120 - good, "bar"], [bad, 120 - good - bad, "bad"]]) {
        if (height <= 0) continue;
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", String(x));
        rect.setAttribute("width", "8");
        rect.setAttribute("y", String(y));
        rect.setAttribute("height", String(height));
        rect.setAttribute("class", cls);
        chart.append(rect);
      }
    });
    const last = seconds.length > 1 ? seconds[seconds.length - 2] : null; // the last complete second
    W.text("rate-now", last ? "· " + last.payments + "/s" : "");
    const rows = W.$("outcome-rows");
    rows.replaceChildren();
    const outcomes = Object.entries(answer.data.outcomes || {}).sort((a, b) => b[1] - a[1]);
    for (const [code, count] of outcomes) {
      const tr = document.createElement("tr");
      tr.dataset.outcome = code;
      tr.append(W.el("td", code), W.el("td", count));
      rows.append(tr);
    }
  }

  // ---- trace --------------------------------------------------------------------------------------
  async function trace(event) {
    event.preventDefault();
    const id = W.$("trace-id").value.trim();
    W.$("trace-rows").replaceChildren();
    W.text("trace-summary", "");
    if (!/^[a-z0-9_]{1,64}$/.test(id)) {
      W.message("trace-message", "A request id looks like pr_ followed by letters and digits.", "bad");
      return;
    }
    const answer = await api("GET", "/api/payments/" + encodeURIComponent(id));
    if (answer.status !== 200 || !answer.data) {
      W.message("trace-message", W.errorText(answer), "bad");
      return;
    }
    W.message("trace-message", "");
    const r = answer.data;
    W.text("trace-summary", r.id + " · " + r.status + " · " + W.money(r.amount, r.currency) + " · " + r.merchant.name);
    const rows = W.$("trace-rows");
    for (const step of r.steps || []) {
      const tr = document.createElement("tr");
      tr.append(W.el("td", W.clock(step.at)), W.el("td", step.stage), W.el("td", step.event), W.el("td", step.detail));
      rows.append(tr);
    }
  }

  // ---- reconcile ----------------------------------------------------------------------------------
  async function reconcile() {
    W.$("reconcile-button").disabled = true;
    const answer = await api("POST", "/api/reconcile", {});
    W.$("reconcile-button").disabled = false;
    const rows = W.$("reconcile-rows");
    rows.replaceChildren();
    W.show("reconcile-status", true);
    if (answer.status !== 200 || !answer.data) {
      W.status("reconcile-status", "error");
      rows.append(W.el("tr", W.errorText(answer)));
      return;
    }
    W.status("reconcile-status", answer.data.ok ? "succeeded" : "error");
    W.$("reconcile-status").textContent = answer.data.ok ? "all invariants hold" : "FAILED";
    for (const check of answer.data.checks || []) {
      const tr = document.createElement("tr");
      tr.append(W.el("td", check.ok ? "ok" : "FAIL"), W.el("td", check.name), W.el("td", (check.offending || []).join("; ")));
      rows.append(tr);
    }
  }

  W.$("drain-button").addEventListener("click", drain);
  W.$("drain-cancel").addEventListener("click", () => { drainTarget = null; W.show("drain-panel", false); });
  W.$("trace-form").addEventListener("submit", trace);
  W.$("reconcile-button").addEventListener("click", reconcile);
  refreshInstances();
  refreshRates();
  setInterval(refreshInstances, 2000);
  setInterval(refreshRates, 1000);
})();
