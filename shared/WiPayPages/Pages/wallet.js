// The wallet (served at /wallet/ by the phone-gateway) for a phone with only a browser: enroll with the
// one-time code, verify the counter's payload against the published keys before showing it, pay with the
// PIN, follow the result on the device's event stream, show the balance.
//
// The device key is an Ed25519 key made here with WebCrypto as non-extractable and kept in IndexedDB: the
// page can sign with it but nothing (not even this page) can read the private key out. Every call but the
// enrollment carries the device signature of the contract (version 2, which also covers Idempotency-Key).
"use strict";

(function () {
  const W = window.WiPay;

  // ---- the device, in IndexedDB -------------------------------------------------------------------
  const DB = "wipay-wallet";
  const STORE = "device";

  function openDB() {
    return new Promise((resolve, reject) => {
      const request = indexedDB.open(DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  async function dbGet(key) {
    const db = await openDB();
    return new Promise((resolve, reject) => {
      const request = db.transaction(STORE, "readonly").objectStore(STORE).get(key);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  async function dbPut(key, value) {
    const db = await openDB();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, "readwrite");
      tx.objectStore(STORE).put(value, key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }
  async function dbDelete(key) {
    const db = await openDB();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, "readwrite");
      tx.objectStore(STORE).delete(key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }

  let device = null; // {deviceId, accountId, name, privateKey (CryptoKey, non-extractable)}
  let payloadKeys = new Map(); // key id → CryptoKey (verify)
  let stream = null;
  let chosen = null; // {text, payload, keyId}
  let pin = "";
  let waiting = null; // {requestId, resolve} for the completion notice

  // ---- device signatures --------------------------------------------------------------------------
  async function signed(method, path, bodyText, idempotencyKey) {
    const timestamp = String(Math.floor(Date.now() / 1000));
    const bodyHash = await W.sha256hex(W.utf8(bodyText || ""));
    const message = ["wipay-sig-2", method, path, timestamp, bodyHash, idempotencyKey || ""].join("\n");
    const signature = await crypto.subtle.sign({ name: "Ed25519" }, device.privateKey, W.utf8(message));
    const headers = {
      "X-Device-Id": device.deviceId, "X-Timestamp": timestamp, "X-Signature": W.b64url(signature),
      "X-Signature-Version": "2",
    };
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    return headers;
  }

  // ---- payloads: the same checks as shared/WiPayPayload, in the same order ------------------------
  const Payload = {
    crc16(bytes) {
      let crc = 0xffff;
      for (const byte of bytes) {
        crc ^= byte << 8;
        for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
      }
      return crc.toString(16).toUpperCase().padStart(4, "0");
    },
    tlv(scalars) {
      const fields = [];
      let i = 0;
      while (i < scalars.length) {
        if (i + 4 > scalars.length) throw new Error("truncated");
        const tag = scalars.slice(i, i + 2).join("");
        const lengthText = scalars.slice(i + 2, i + 4).join("");
        if (!/^\d\d$/.test(tag) || !/^\d\d$/.test(lengthText)) throw new Error("malformed tag or length");
        const length = Number(lengthText);
        if (i + 4 + length > scalars.length) throw new Error("a field runs past the end");
        fields.push({ tag, value: scalars.slice(i + 4, i + 4 + length), offset: i });
        i += 4 + length;
        if (fields.length > 64) throw new Error("too many fields");
      }
      return fields;
    },
    sub(value) {
      const out = {};
      for (const f of Payload.tlv(value)) {
        if (Object.prototype.hasOwnProperty.call(out, f.tag)) throw new Error("a field twice in a template");
        out[f.tag] = f.value.join("");
      }
      return out;
    },
    /** {payload, keyId} or throws {kind: "invalid" | "expired" | "unknown_key", message}. */
    async verify(text, keys, nowSeconds) {
      const fail = (kind, message) => { throw { kind, message }; };
      if (typeof text !== "string" || text.length === 0 || W.utf8(text).length > 2048) fail("invalid", "empty or too long");
      const scalars = Array.from(text);
      let fields;
      try {
        fields = Payload.tlv(scalars);
      } catch (e) {
        fail("invalid", "not a payment request (" + e.message + ")");
      }
      const crc = fields[fields.length - 1];
      if (!crc || crc.tag !== "63" || crc.value.length !== 4) fail("invalid", "no CRC at the end");
      if (Payload.crc16(W.utf8(scalars.slice(0, crc.offset + 4).join(""))) !== crc.value.join("")) {
        fail("invalid", "altered or truncated (CRC mismatch)");
      }
      const keyField = fields[fields.length - 3];
      const signatureField = fields[fields.length - 2];
      if (!keyField || keyField.tag !== "82" || signatureField.tag !== "83") fail("invalid", "not signed");
      const keyId = keyField.value.join("");
      const key = keys.get(keyId);
      if (!key) fail("unknown_key", "signed with a key this bank does not publish (" + keyId + ")");
      const signature = W.unb64url(signatureField.value.join(""));
      if (!signature || signature.length !== 64) fail("invalid", "malformed signature");
      const good = await crypto.subtle.verify({ name: "Ed25519" }, key, signature, W.utf8(scalars.slice(0, keyField.offset).join("")));
      if (!good) fail("invalid", "forged: the signature does not match");
      const byTag = {};
      for (const f of fields) {
        if (Object.prototype.hasOwnProperty.call(byTag, f.tag)) fail("invalid", "a field twice");
        byTag[f.tag] = f.value;
      }
      const get = (tag) => (byTag[tag] ? byTag[tag].join("") : null);
      if (get("00") !== "01" || get("01") !== "12") fail("invalid", "not a dynamic EMVCo payload");
      if (!byTag["26"] || !byTag["81"] || !byTag["84"]) fail("invalid", "not a WiPay payload");
      let account, wipay, names;
      try {
        account = Payload.sub(byTag["26"]);
        wipay = Payload.sub(byTag["81"]);
        names = Payload.sub(byTag["84"]);
      } catch (e) {
        fail("invalid", e.message);
      }
      if (account["00"] !== "WIPAY") fail("invalid", "not a WiPay payload");
      if (wipay["00"] !== "1") fail("invalid", "an unsupported payload version");
      const id = /^[A-Za-z0-9_.:-]{1,64}$/;
      const payload = {
        requestId: account["01"], merchantId: account["02"], merchantName: names["00"], terminalName: names["01"] || null,
        amount: wipay["01"], currency: wipay["02"], expiresAt: wipay["03"], createdAt: wipay["04"] || null,
      };
      if (!id.test(payload.requestId || "") || !id.test(payload.merchantId || "")) fail("invalid", "malformed ids");
      if (!/^\d{1,13}$/.test(payload.amount || "") || Number(payload.amount) < 1 || Number(payload.amount) > 1e12) fail("invalid", "malformed amount");
      if (!/^[A-Z]{3}$/.test(payload.currency || "")) fail("invalid", "malformed currency");
      if (!/^\d{1,12}$/.test(payload.expiresAt || "")) fail("invalid", "malformed expiry");
      if (!payload.merchantName) fail("invalid", "no merchant name");
      payload.amount = Number(payload.amount);
      payload.expiresAt = Number(payload.expiresAt);
      if (nowSeconds > payload.expiresAt) fail("expired", "this request expired at " + new Date(payload.expiresAt * 1000).toLocaleTimeString());
      return { payload, keyId };
    },
  };

  async function loadPayloadKeys() {
    const answer = await W.call("GET", "/v1/payload-keys", {});
    if (answer.status !== 200 || !answer.data || !Array.isArray(answer.data.keys)) return false;
    const keys = new Map();
    for (const k of answer.data.keys) {
      const raw = k && W.unb64url(k.public_key);
      if (!raw || raw.length !== 32 || typeof k.key_id !== "string") continue;
      try {
        keys.set(k.key_id, await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]));
      } catch (e) {
        // A key this browser cannot import verifies nothing.
      }
    }
    payloadKeys = keys;
    return true;
  }

  // ---- enrollment ---------------------------------------------------------------------------------
  async function enroll(event) {
    event.preventDefault();
    const code = W.$("enroll-code").value.trim();
    const name = W.$("enroll-name").value.trim();
    if (!code || code.length > 64) return W.message("enroll-message", "The code looks like XXXX-XXXX-XXXX.", "bad");
    if (!name || name.length > 100) return W.message("enroll-message", "Give this device a name (at most 100 characters).", "bad");
    W.$("enroll-button").disabled = true;
    try {
      const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      const publicKey = W.b64url(await crypto.subtle.exportKey("raw", pair.publicKey));
      const answer = await W.call("POST", "/v1/devices", {}, JSON.stringify({ enrollment_code: code, public_key: publicKey, name }));
      if ((answer.status !== 201 && answer.status !== 200) || !answer.data || typeof answer.data.device_id !== "string") {
        W.message("enroll-message", "Not enrolled: " + W.errorText(answer), "bad");
        return;
      }
      device = { deviceId: answer.data.device_id, accountId: answer.data.account_id, name, privateKey: pair.privateKey };
      await dbPut("current", device);
      W.$("enroll-code").value = "";
      W.message("enroll-message", "");
      await signedIn();
    } catch (e) {
      W.message("enroll-message", "This browser could not make a device key.", "bad");
    } finally {
      W.$("enroll-button").disabled = false;
    }
  }

  async function forgetDevice() {
    if (!window.confirm("Forget this device? You will need a new enrollment code to pay from this browser again.")) return;
    if (stream) stream.stop();
    await dbDelete("current");
    device = null;
    for (const id of ["pay", "confirm", "result", "account", "forget-device"]) W.show(id, false);
    W.show("enroll", true);
  }

  // ---- paying -------------------------------------------------------------------------------------
  async function check() {
    W.message("pay-message", "");
    const text = W.$("payload").value.trim();
    let verified;
    try {
      verified = await Payload.verify(text, payloadKeys, Math.floor(Date.now() / 1000));
    } catch (e) {
      if (e && e.kind === "unknown_key" && (await loadPayloadKeys())) {
        // The bank may have rotated its key: once more with the keys it publishes now.
        try {
          verified = await Payload.verify(text, payloadKeys, Math.floor(Date.now() / 1000));
        } catch (again) {
          e = again;
        }
      }
      if (!verified) {
        const kind = e && e.kind === "expired" ? "Expired" : "Not a genuine payment request";
        W.message("pay-message", kind + ": " + ((e && e.message) || "cannot be read") + ". It cannot be paid.", "bad");
        document.body.dataset.payload = e && e.kind === "expired" ? "expired" : "invalid";
        return;
      }
    }
    document.body.dataset.payload = "verified";
    chosen = { text, payload: verified.payload, keyId: verified.keyId };
    const p = verified.payload;
    W.text("confirm-amount", W.money(p.amount, p.currency));
    W.text("confirm-payee", p.terminalName ? p.merchantName + " — " + p.terminalName : p.merchantName);
    W.text("confirm-request", p.requestId);
    W.text("confirm-key", verified.keyId);
    W.text("confirm-left", String(Math.max(0, p.expiresAt - Math.floor(Date.now() / 1000))));
    pin = "";
    renderPIN();
    W.message("confirm-message", "");
    W.show("pay", false);
    W.show("confirm", true);
  }

  function renderPIN() {
    W.text("pin-dots", "•".repeat(pin.length));
    W.$("pay-button").disabled = pin.length < 4;
  }

  function buildPinpad() {
    const pad = W.$("pinpad");
    for (const key of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "clear", "0", "⌫"]) {
      const button = W.el("button", key === "clear" ? "Clear" : key);
      button.type = "button";
      button.dataset.key = key;
      button.addEventListener("click", () => {
        if (key === "clear") pin = "";
        else if (key === "⌫") pin = pin.slice(0, -1);
        else if (pin.length < 6) pin += key;
        renderPIN();
      });
      pad.append(button);
    }
  }

  async function pay() {
    if (!chosen || !/^\d{4,6}$/.test(pin)) return;
    const body = JSON.stringify({ payload: chosen.text, pin });
    pin = "";
    renderPIN();
    W.$("pay-button").disabled = true;
    const requestId = chosen.payload.requestId;
    const key = W.newKey();
    const notice = new Promise((resolve) => {
      waiting = { requestId, resolve };
      setTimeout(() => resolve(null), 20000);
    });
    let answer;
    // The same Idempotency-Key on every try: a retry never pays twice.
    for (let attempt = 0; attempt < 4; attempt++) {
      answer = await W.call("POST", "/v1/payment-instructions", await signed("POST", "/v1/payment-instructions", body, key), body);
      if (!W.retryable(answer)) break;
      await W.sleep(400 * (attempt + 1));
    }
    W.show("confirm", false);
    W.show("result", true);
    const p = chosen.payload;
    const payee = p.terminalName ? p.merchantName + " — " + p.terminalName : p.merchantName;
    if (answer.status === 200 && answer.data) {
      W.status("result-status", "succeeded");
      W.text("result-text", "Paid " + W.money(p.amount, p.currency) + " to " + payee + ".");
      if (typeof answer.data.balance === "number") W.text("balance", W.money(answer.data.balance, p.currency));
    } else if (answer.status === 422 && answer.data) {
      W.status("result-status", "declined");
      W.text("result-text", "Declined: " + W.errorText(answer) + ". Nothing was paid.");
    } else {
      W.status("result-status", "error");
      W.text("result-text", "Not paid: " + W.errorText(answer) + ".");
      waiting = null;
      W.text("result-notice", "");
      return;
    }
    W.text("result-notice", "Waiting for the completion notice…");
    const event = await notice;
    waiting = null;
    W.text("result-notice", event ? "Notice received: " + event.type + "." : "No completion notice yet; the balance below is current.");
    refreshAccount();
  }

  function done() {
    chosen = null;
    W.$("payload").value = "";
    W.show("result", false);
    W.show("confirm", false);
    W.show("pay", true);
  }

  // ---- scanning (where the browser has BarcodeDetector and a camera) ------------------------------
  async function scan() {
    const video = W.$("scan-video");
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    } catch (e) {
      W.message("pay-message", "No camera: paste the payload instead.", "bad");
      return;
    }
    const detector = new window.BarcodeDetector({ formats: ["qr_code"] });
    video.srcObject = media;
    W.show("scan-video", true);
    await video.play();
    const stopAt = Date.now() + 60000;
    try {
      while (Date.now() < stopAt) {
        const codes = await detector.detect(video);
        const hit = codes.find((c) => typeof c.rawValue === "string" && c.rawValue.startsWith("000201"));
        if (hit) {
          W.$("payload").value = hit.rawValue;
          break;
        }
        await W.sleep(250);
      }
    } finally {
      for (const track of media.getTracks()) track.stop();
      W.show("scan-video", false);
    }
    if (W.$("payload").value) check();
  }

  // ---- account and live notices -------------------------------------------------------------------
  async function refreshAccount() {
    const answer = await W.call("GET", "/v1/accounts/me", await signed("GET", "/v1/accounts/me", ""));
    if (answer.status !== 200 || !answer.data) return;
    const a = answer.data;
    W.text("balance", W.money(a.balance, a.currency));
    const rows = W.$("recent-rows");
    rows.replaceChildren();
    for (const r of Array.isArray(a.recent) ? a.recent.slice(0, 10) : []) {
      const tr = document.createElement("tr");
      const merchant = (r.merchant && r.merchant.name) || r.merchant_name || "";
      tr.append(W.el("td", W.clock(r.posted_at || r.created_at)), W.el("td", W.money(r.amount, r.currency || a.currency)), W.el("td", merchant));
      rows.append(tr);
    }
  }

  function onEvent(event) {
    const data = event.data;
    if (!data || typeof data.request_id !== "string") return;
    const type = typeof data.type === "string" ? data.type : event.type;
    if (waiting && waiting.requestId === data.request_id && (type === "payment.succeeded" || type === "payment.declined")) {
      waiting.resolve({ type, id: event.id });
    }
    if (type === "refund.succeeded" || type === "payment.succeeded") refreshAccount();
  }

  async function signedIn() {
    W.show("enroll", false);
    W.show("forget-device", true);
    W.show("pay", true);
    W.show("account", true);
    if (!(await loadPayloadKeys())) W.message("pay-message", "Cannot fetch the bank's payload keys yet; Check will try again.", "bad");
    if (stream) stream.stop();
    stream = new W.EventStream("/v1/devices/me/events", () => signed("GET", "/v1/devices/me/events", ""), onEvent, (state) => {
      W.text("stream-state", state === "open" ? "· live" : "· reconnecting…");
      document.body.dataset.stream = state;
    }).start();
    refreshAccount();
  }

  async function start() {
    if (!window.crypto || !crypto.subtle || !window.indexedDB) {
      W.text("unsupported-why", "It needs WebCrypto and IndexedDB, which browsers offer on https:// pages (and on localhost).");
      W.show("unsupported", true);
      return;
    }
    try {
      const probe = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      if (!probe) throw new Error("no key");
    } catch (e) {
      W.text("unsupported-why", "This browser's WebCrypto has no Ed25519 (Chromium 137, Firefox 129 and Safari 17 have it).");
      W.show("unsupported", true);
      return;
    }
    if ("BarcodeDetector" in window && navigator.mediaDevices) W.show("scan-button", true);
    buildPinpad();
    device = (await dbGet("current")) || null;
    if (device) await signedIn();
    else W.show("enroll", true);
  }

  W.$("enroll-form").addEventListener("submit", enroll);
  W.$("forget-device").addEventListener("click", forgetDevice);
  W.$("check-button").addEventListener("click", check);
  W.$("scan-button").addEventListener("click", scan);
  W.$("pay-button").addEventListener("click", pay);
  W.$("back-button").addEventListener("click", done);
  W.$("done-button").addEventListener("click", done);
  start();
})();
