// The counter (served at /pos/ by the pos-gateway): charge an amount, show the request as a QR code with a
// countdown, follow it live on the terminal's event stream, cancel or refund, and list today's requests.
// The terminal key is kept in this browser (localStorage) and only ever sent as Authorization: Bearer.
"use strict";

(function () {
  const W = window.WiPay;
  const STORE_KEY = "wipay.pos.terminal-key";
  const STORE_CURRENCY = "wipay.pos.currency";
  const UNKNOWN_REQUEST = "pr_aaaaaaaaaaaaaaaaaaaa";

  let terminalKey = localStorage.getItem(STORE_KEY);
  let current = null;
  let ticker = null;
  let qrURL = null;
  let stream = null;
  let lastRefresh = 0;

  const auth = () => ({ Authorization: "Bearer " + terminalKey });
  const requestPath = (id) => "/v1/payment-requests/" + encodeURIComponent(id);

  // ---- today's requests at this till (GET /v1/payment-requests since local midnight) ---------------
  let dayTimer = null;
  function midnight() {
    const d = new Date();
    d.setHours(0, 0, 0, 0);
    return d.toISOString();
  }
  /** Asks again soon (several events in a row make one call). */
  function remember() {
    clearTimeout(dayTimer);
    dayTimer = setTimeout(refreshDay, 300);
  }
  async function refreshDay() {
    const answer = await W.call("GET", "/v1/payment-requests?limit=200&since=" + encodeURIComponent(midnight()), auth());
    if (answer.status !== 200 || !answer.data || !Array.isArray(answer.data.requests)) return;
    const rows = W.$("day-rows");
    rows.replaceChildren();
    for (const r of answer.data.requests) {
      const tr = document.createElement("tr");
      tr.dataset.request = r.id;
      tr.append(W.el("td", W.clock(r.created_at)), W.el("td", W.money(r.amount, r.currency)), W.el("td", r.reference));
      const cell = W.el("td");
      cell.append(W.el("span", r.status, "status " + r.status));
      tr.append(cell);
      rows.append(tr);
    }
    W.text("day-total", answer.data.requests.length + " request" + (answer.data.requests.length === 1 ? "" : "s"));
  }

  // ---- the key ------------------------------------------------------------------------------------
  async function saveKey(event) {
    event.preventDefault();
    const candidate = W.$("key-input").value.trim();
    if (!/^[\x21-\x7e]{1,256}$/.test(candidate)) {
      W.message("key-message", "That is not a terminal key.", "bad");
      return;
    }
    W.$("key-save").disabled = true;
    // A request id that cannot exist: 404 means the key is good, 401 that it is not.
    const answer = await W.call("GET", requestPath(UNKNOWN_REQUEST), { Authorization: "Bearer " + candidate });
    W.$("key-save").disabled = false;
    if (answer.status === 401) {
      W.message("key-message", "The gateway does not know this key.", "bad");
      return;
    }
    if (answer.status !== 404) {
      W.message("key-message", "Cannot check the key now: " + W.errorText(answer), "bad");
      return;
    }
    W.$("key-input").value = "";
    terminalKey = candidate;
    localStorage.setItem(STORE_KEY, candidate);
    W.message("key-message", "");
    start();
  }
  function forgetKey() {
    if (stream) stream.stop();
    localStorage.removeItem(STORE_KEY);
    terminalKey = null;
    current = null;
    for (const id of ["charge", "current", "day", "forget-key"]) W.show(id, false);
    W.show("key-setup", true);
  }

  // ---- charging -----------------------------------------------------------------------------------
  async function charge(event) {
    event.preventDefault();
    const currency = W.$("currency").value.trim().toUpperCase();
    if (!/^[A-Z]{3}$/.test(currency)) {
      W.message("charge-message", "A currency is 3 letters, e.g. CNY.", "bad");
      return;
    }
    const amount = W.parseAmount(W.$("amount").value, currency);
    if (amount === null) {
      W.message("charge-message", "Enter an amount such as 12.50 (at most " + W.decimals(currency) + " decimals).", "bad");
      return;
    }
    const reference = W.$("reference").value.trim() || "counter-" + Date.now();
    const body = JSON.stringify({ amount, currency, reference, expires_in: Number(W.$("expires-in").value) });
    const headers = Object.assign(auth(), { "Idempotency-Key": W.newKey() });
    W.$("charge-button").disabled = true;
    let answer;
    // The same key on every try: a retry never creates a second request.
    for (let attempt = 0; attempt < 4; attempt++) {
      answer = await W.call("POST", "/v1/payment-requests", headers, body);
      if (!W.retryable(answer)) break;
      await W.sleep(400 * (attempt + 1));
    }
    W.$("charge-button").disabled = false;
    if ((answer.status !== 201 && answer.status !== 200) || !answer.data || typeof answer.data.id !== "string") {
      W.message("charge-message", "Not created: " + W.errorText(answer), "bad");
      return;
    }
    W.message("charge-message", "");
    localStorage.setItem(STORE_CURRENCY, currency);
    W.$("amount").value = "";
    W.$("reference").value = "";
    remember();
    showCurrent(answer.data);
  }

  function showCurrent(request) {
    current = request;
    W.show("charge", false);
    W.show("current", true);
    W.text("current-amount", W.money(request.amount, request.currency));
    W.text("current-merchant", request.merchant && request.merchant.name);
    W.text("current-reference", request.reference + (request.description ? " — " + request.description : ""));
    W.text("current-id", request.id);
    W.$("current-payload").value = request.payload || "";
    W.message("current-message", "");
    W.$("current-qr").removeAttribute("src");
    loadQR(request.id);
    render(request);
    clearInterval(ticker);
    ticker = setInterval(tick, 1000);
    tick();
  }

  async function loadQR(id) {
    let response;
    try {
      response = await fetch(requestPath(id) + "/qr.svg", { headers: auth(), cache: "no-store", credentials: "omit" });
    } catch (e) {
      return;
    }
    if (!response.ok || !current || current.id !== id) return;
    const blob = await response.blob();
    if (qrURL) URL.revokeObjectURL(qrURL);
    qrURL = URL.createObjectURL(blob);
    W.$("current-qr").src = qrURL;
  }

  const OUTCOME_TEXT = {
    expired: "Expired: not paid.",
    canceled: "Canceled: not paid.",
    declined: "Declined: not paid.",
  };

  function render(request) {
    W.status("current-status", request.status);
    const pending = request.status === "pending";
    W.show("cancel-button", pending);
    W.show("refund-button", request.status === "succeeded");
    W.$("current-qr").parentElement.classList.toggle("hidden", !pending);
    W.show("receipt", request.status === "succeeded");
    if (request.status === "succeeded" && request.payment) {
      W.text("receipt-payment", request.payment.id);
      W.text("receipt-payer", request.payment.payer);
      W.text("receipt-time", W.clock(request.payment.posted_at));
      W.message("current-message", "");
    } else if (OUTCOME_TEXT[request.status]) {
      const why = request.decline_code ? " (" + request.decline_code + ")" : "";
      W.message("current-message", OUTCOME_TEXT[request.status] + why, "bad");
    }
    if (!pending) clearInterval(ticker);
  }

  function tick() {
    if (!current) return;
    const left = W.secondsUntil(current.expires_at);
    W.text("current-countdown", String(left));
    // Past its expiry: ask (at most every 3 s) until the sweeper has ended it.
    if (current.status === "pending" && left === 0 && Date.now() - lastRefresh > 3000) refreshCurrent();
  }

  async function refreshCurrent() {
    if (!current) return;
    lastRefresh = Date.now();
    const id = current.id;
    const answer = await W.call("GET", requestPath(id), auth());
    if (answer.status === 200 && answer.data && answer.data.id === id && current && current.id === id) {
      current = answer.data;
      render(current);
      remember();
    }
  }

  async function cancel() {
    if (!current) return;
    W.$("cancel-button").disabled = true;
    const headers = Object.assign(auth(), { "Idempotency-Key": W.newKey() });
    let answer;
    for (let attempt = 0; attempt < 4; attempt++) {
      answer = await W.call("POST", requestPath(current.id) + "/cancel", headers);
      if (!W.retryable(answer)) break;
      await W.sleep(400 * (attempt + 1));
    }
    W.$("cancel-button").disabled = false;
    if (answer.status === 200 && answer.data) {
      current = answer.data;
      render(current);
      remember();
    } else {
      // 409: it became final a moment ago (perhaps paid): say what it is now.
      await refreshCurrent();
      if (current.status === "pending") W.message("current-message", "Not canceled: " + W.errorText(answer), "bad");
    }
  }

  async function refund() {
    if (!current || !current.payment) return;
    if (!window.confirm("Refund " + W.money(current.amount, current.currency) + " in full?")) return;
    W.$("refund-button").disabled = true;
    const headers = Object.assign(auth(), { "Idempotency-Key": W.newKey() });
    let answer;
    for (let attempt = 0; attempt < 4; attempt++) {
      answer = await W.call("POST", "/v1/payments/" + encodeURIComponent(current.payment.id) + "/refunds", headers, "{}");
      if (!W.retryable(answer)) break;
      await W.sleep(400 * (attempt + 1));
    }
    W.$("refund-button").disabled = false;
    if (answer.status === 201 && answer.data) {
      W.message("current-message", "Refunded " + W.money(answer.data.amount, current.currency) + " (refund " + answer.data.id + ").", "ok");
      W.show("refund-button", false);
    } else {
      W.message("current-message", "Not refunded: " + W.errorText(answer), "bad");
    }
  }

  function newCharge() {
    current = null;
    clearInterval(ticker);
    W.show("current", false);
    W.show("charge", true);
    W.$("amount").focus();
  }

  // ---- the live stream ----------------------------------------------------------------------------
  function onEvent(event) {
    const data = event.data;
    if (!data || typeof data.request_id !== "string") return;
    const type = typeof data.type === "string" ? data.type : event.type;
    if (type.startsWith("payment.") && type !== "payment.attempt_declined") remember();
    if (!current || data.request_id !== current.id) return;
    if (type === "payment.attempt_declined") {
      const code = (data.error && data.error.code) || data.decline_code || "declined";
      W.message("current-message", "Attempt declined (" + code + "); the request is still open.", "bad");
    } else if (type === "refund.succeeded") {
      W.message("current-message", "Refunded " + W.money(data.amount, data.currency) + ".", "ok");
    } else if (type.startsWith("payment.")) {
      // The whole object (payment id, payer) comes from the request itself.
      refreshCurrent();
    }
  }

  function openStream() {
    if (stream) stream.stop();
    stream = new W.EventStream("/v1/terminal/events", async () => auth(), onEvent, (state) => {
      W.text("stream-state", state === "open" ? "· live" : "· reconnecting…");
      document.body.dataset.stream = state;
      // Whatever happened while the stream was away: read the current request again.
      if (state === "open" && current) refreshCurrent();
    }).start();
  }

  function start() {
    if (!terminalKey) {
      W.show("key-setup", true);
      return;
    }
    W.show("key-setup", false);
    W.show("forget-key", true);
    W.show("day", true);
    if (!current) W.show("charge", true);
    W.$("currency").value = localStorage.getItem(STORE_CURRENCY) || "CNY";
    openStream();
    refreshDay();
  }

  W.$("key-form").addEventListener("submit", saveKey);
  W.$("forget-key").addEventListener("click", forgetKey);
  W.$("charge-form").addEventListener("submit", charge);
  W.$("cancel-button").addEventListener("click", cancel);
  W.$("refund-button").addEventListener("click", refund);
  W.$("new-button").addEventListener("click", newCharge);
  start();
})();
