// WiPay pages: what the counter and the wallet share. No framework, no build step, no third-party code.
// Every string that came from a server or a payload is put on the page with textContent, never as HTML.
"use strict";

(function () {
  const W = {};

  // ---- the page -------------------------------------------------------------------------------------
  W.$ = (id) => document.getElementById(id);
  W.text = (id, value) => { W.$(id).textContent = value == null ? "" : String(value); };
  W.show = (id, on) => { W.$(id).classList.toggle("hidden", !on); };
  W.el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  W.message = (id, text, kind) => {
    const e = W.$(id);
    e.textContent = text || "";
    e.className = "message" + (kind ? " " + kind : "");
    e.classList.toggle("hidden", !text);
  };
  W.status = (id, status) => {
    const e = W.$(id);
    e.textContent = status;
    e.className = "status " + status;
  };
  W.sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- money: integer minor units, never floating point ---------------------------------------------
  const EXPONENTS = {
    BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0, RWF: 0, UGX: 0, UYI: 0, VND: 0,
    VUV: 0, XAF: 0, XOF: 0, XPF: 0, BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3, CLF: 4, UYW: 4,
  };
  W.decimals = (currency) => (Object.prototype.hasOwnProperty.call(EXPONENTS, currency) ? EXPONENTS[currency] : 2);

  /** 1250, "CNY" → "12.50 CNY". */
  W.money = (minor, currency) => {
    const places = W.decimals(currency);
    let n = BigInt(minor);
    const negative = n < 0n;
    if (negative) n = -n;
    let text = n.toString();
    if (places > 0) {
      text = text.padStart(places + 1, "0");
      text = text.slice(0, text.length - places) + "." + text.slice(text.length - places);
    }
    return (negative ? "-" : "") + text + " " + currency;
  };

  /** "12.5", "CNY" → 1250; null when it is not an amount of 1 minor unit to 10^12. */
  W.parseAmount = (text, currency) => {
    const places = W.decimals(currency);
    const pattern = places === 0 ? /^(\d{1,13})$/ : new RegExp("^(\\d{1,13})(?:[.,](\\d{1," + places + "}))?$");
    const m = pattern.exec(String(text).trim());
    if (!m) return null;
    const minor = BigInt(m[1]) * 10n ** BigInt(places) + BigInt((m[2] || "").padEnd(places, "0") || "0");
    if (minor < 1n || minor > 10n ** 12n) return null;
    return Number(minor);
  };

  // ---- bytes ----------------------------------------------------------------------------------------
  W.utf8 = (s) => new TextEncoder().encode(s);
  W.hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  W.b64url = (buffer) => {
    let s = "";
    for (const b of new Uint8Array(buffer)) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  /** Strict base64url without padding → bytes, or null. */
  W.unb64url = (text) => {
    if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
    let s = text.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    try {
      return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    } catch (e) {
      return null;
    }
  };
  /** A fresh Idempotency-Key: 128 random bits. */
  W.newKey = () => W.b64url(crypto.getRandomValues(new Uint8Array(16)));
  W.sha256hex = async (bytes) => W.hex(await crypto.subtle.digest("SHA-256", bytes));

  // ---- time -----------------------------------------------------------------------------------------
  W.secondsUntil = (iso) => Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
  W.clock = (iso) => {
    const d = new Date(iso);
    return isNaN(d.getTime()) ? "" : d.toLocaleTimeString();
  };

  // ---- HTTP -----------------------------------------------------------------------------------------
  /**
   * One call to this page's own gateway: {status, data} (data is the parsed JSON body, or null).
   * A network failure is {status: 0, data: {error: {code: "network_error", ...}}}.
   */
  W.call = async (method, path, headers, body) => {
    const init = { method, headers: Object.assign({}, headers), cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      init.body = body;
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      return { status: 0, data: { error: { code: "network_error", message: "cannot reach the gateway" } } };
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    return { status: response.status, data, headers: response.headers };
  };
  /** "code: message" of an error answer. */
  W.errorText = (r) => {
    const e = r && r.data && r.data.error;
    if (e && typeof e.code === "string") return e.code + (e.message ? ": " + e.message : "");
    return "HTTP " + (r ? r.status : "?");
  };
  /** True for answers worth retrying with the same Idempotency-Key. */
  W.retryable = (r) => r.status === 0 || r.status === 502 || r.status === 503 || r.status === 504;

  // ---- Server-Sent Events over fetch (EventSource cannot send our auth headers) -----------------
  W.EventStream = class {
    /**
     * @param path the stream's path
     * @param headersFor async () => headers for one connection (a fresh device signature each time)
     * @param onEvent ({type, id, data}) => void
     * @param onState (state, detail) => void, state "open" | "error"
     */
    constructor(path, headersFor, onEvent, onState) {
      this.path = path;
      this.headersFor = headersFor;
      this.onEvent = onEvent;
      this.onState = onState || (() => {});
      this.lastId = null;
      this.stopped = false;
      this.controller = null;
    }

    start() {
      this.loop();
      return this;
    }

    stop() {
      this.stopped = true;
      if (this.controller) this.controller.abort();
    }

    async loop() {
      while (!this.stopped) {
        this.controller = new AbortController();
        let pause = 1000;
        try {
          const headers = await this.headersFor();
          headers["Accept"] = "text/event-stream";
          if (this.lastId) headers["Last-Event-ID"] = this.lastId;
          const response = await fetch(this.path, { headers, signal: this.controller.signal, cache: "no-store", credentials: "omit" });
          if (!response.ok || !response.body) {
            this.onState("error", "HTTP " + response.status);
            pause = response.status === 401 || response.status === 403 ? 10000 : 2000;
          } else {
            this.onState("open");
            await this.read(response.body.getReader());
            this.onState("error", "the stream ended");
          }
        } catch (e) {
          if (this.stopped) return;
          this.onState("error", "the stream was interrupted");
        }
        if (!this.stopped) await W.sleep(pause);
      }
    }

    async read(reader) {
      const decoder = new TextDecoder();
      let buffer = "";
      let event = { data: [], type: "message", id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        if (buffer.length > 1 << 20) throw new Error("an event larger than 1 MiB");
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (event.data.length) {
              if (event.id !== null) this.lastId = event.id;
              let data = null;
              try {
                data = JSON.parse(event.data.join("\n"));
              } catch (e) {
                data = null;
              }
              try {
                this.onEvent({ type: event.type, id: event.id, data });
              } catch (e) {
                // A page bug must not stop the stream.
              }
            }
            event = { data: [], type: "message", id: null };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? "" : line.slice(colon + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "data") event.data.push(v);
          else if (field === "event") event.type = v;
          else if (field === "id") event.id = v;
        }
      }
    }
  };

  window.WiPay = W;
})();
