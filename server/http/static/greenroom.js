// Greenroom room-socket client for browsers (ES module, no build step).
//
//   import { GreenroomSocket } from "/static/greenroom.js";
//   const socket = new GreenroomSocket("/ws", { tokenProvider: async () => accessToken });
//   await socket.connect();
//   const joined = await socket.join("stream:42");      // {recovered, epoch, offset, events, grant}
//   socket.on("chat.message", (ev) => show(ev.data));   // ev = {room, offset, type, data}
//   socket.on("rejoined", (info) => { if (!info.recovered) refetch(info.room); });
//   await socket.request("chat.send", "stream:42", { text: "hello" });
//
// The same behaviour as signaling/client.py (see docs/socket-client.md):
// - auth: the first op is `auth` (with the token, or without one for a guest); with a
//   tokenProvider, a fresh token is sent with another `auth` op `refreshMarginMs` before the
//   current one expires (the auth reply's `expires_at`), and after a close for an expired token.
// - request(op, room, data) resolves with the reply's data or rejects with a GreenroomError
//   (`code`, `message`, `details`); TIMEOUT, DISCONNECTED and CLOSED are local codes.
// - join(room) remembers the room's {epoch, offset}; after a reconnect every room is rejoined with
//   `since`, a "rejoined" listener call says whether history covered the gap (recovered: false
//   means: refetch state), and events are delivered in offset order without duplicates. A live
//   event that skips offsets makes the socket leave and rejoin the room with `since`.
// - reconnect with exponential backoff and jitter, at most `maxAttempts` in a row; listeners of
//   "state" see "connecting", "open", "reconnecting", "closed".

const REJOINED = "rejoined";
const AUTH_CLOSE_CODES = new Set([4001, 4003]);
const TRANSIENT = new Set(["TIMEOUT", "DISCONNECTED"]);

export class GreenroomError extends Error {
  constructor(code, message, details = {}) {
    super(`${code}: ${message}`);
    this.name = "GreenroomError";
    this.code = code;
    this.details = details || {};
    this.reason = message;
  }
}

export const DEFAULT_RECONNECT = Object.freeze({
  enabled: true, baseDelayMs: 250, maxDelayMs: 15000, factor: 2, maxAttempts: 20,
});

/** Delay before reconnect attempt `attempt` (1-based): half fixed, half random ("equal jitter"). */
export function backoffDelay(policy, attempt) {
  const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * policy.factor ** Math.max(0, attempt - 1));
  return cap / 2 + Math.random() * (cap / 2);
}

function absoluteWsUrl(url) {
  if (/^wss?:\/\//.test(url)) return url;
  const base = new URL(url, window.location.href);
  base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
  return base.toString();
}

function eventOf(raw, room) {
  if (!raw || typeof raw !== "object" || typeof raw.type !== "string") return null;
  const name = typeof raw.room === "string" ? raw.room : room;
  if (typeof name !== "string") return null;
  const offset = Number.isInteger(raw.offset) ? raw.offset : 0;
  const data = raw.data && typeof raw.data === "object" ? raw.data : {};
  return { room: name, offset, type: raw.type, data };
}

export class GreenroomSocket {
  /**
   * @param {string} url  "/ws" or an absolute ws(s):// URL
   * @param {object} options  token | tokenProvider, reconnect, requestTimeoutMs, refreshMarginMs, maxHeldEvents
   */
  constructor(url, options = {}) {
    if (options.token && options.tokenProvider) throw new Error("give token or tokenProvider, not both");
    this.url = absoluteWsUrl(url);
    this.token = options.token || null;
    this.tokenProvider = options.tokenProvider || null;
    this.policy = { ...DEFAULT_RECONNECT, ...(options.reconnect || {}) };
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.refreshMarginMs = options.refreshMarginMs ?? 30000;
    this.maxHeldEvents = options.maxHeldEvents ?? 10000;
    this.identity = null;
    this.failure = null; // why reconnecting gave up, if it did
    this.state = "idle";
    this.stats = { connects: 0, reconnects: 0, duplicatesDropped: 0, gaps: 0 };
    this._ws = null;
    this._nextRef = 1;
    this._pending = new Map(); // ref -> {resolve, reject, timer}
    this._rooms = new Map(); // name -> {epoch, offset, joining, held, joinData}
    this._listeners = new Map(); // type -> Set<fn>
    this._waiters = []; // resolvers waiting for the socket to be open
    this._refreshTimer = null;
    this._closed = false;
    this._reconnecting = false;
  }

  // --- listeners --------------------------------------------------------------------------

  /** type: an event type ("chat.message"), "event" (all events), "rejoined", "rejoin_failed", "state", "closed". */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  _emit(type, value) {
    for (const fn of this._listeners.get(type) || []) {
      try { fn(value); } catch (err) { console.error("greenroom listener failed", err); }
    }
  }

  _deliver(event) {
    this._emit("event", event);
    this._emit(event.type, event);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  // --- lifecycle --------------------------------------------------------------------------

  /** Open the socket and authenticate (one attempt; rejects on failure). */
  async connect() {
    if (this._closed) throw new GreenroomError("CLOSED", "socket is closed");
    this._setState("connecting");
    try {
      await this._open();
    } catch (err) {
      this._setState("idle");
      throw err;
    }
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._refreshTimer);
    if (this._ws) this._ws.close(1000);
    this._failPending(new GreenroomError("CLOSED", "socket closed"));
    for (const w of this._waiters.splice(0)) w.reject(new GreenroomError("CLOSED", "socket closed"));
    this._setState("closed");
    this._emit("closed", null);
  }

  get connected() {
    return this.state === "open";
  }

  get closed() {
    return this._closed;
  }

  async _open() {
    let token = this.token;
    if (this.tokenProvider) token = this.token = await this.tokenProvider();
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer"; // the server sends text; a binary frame is decoded the same way
    this._ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new GreenroomError("DISCONNECTED", "could not open the socket"));
      ws.onclose = (ev) => reject(new GreenroomError("DISCONNECTED", `socket closed (code ${ev.code})`));
    });
    ws.onmessage = (msg) => this._dispatch(msg.data);
    ws.onerror = () => {};
    let authClose = null;
    ws.onclose = (ev) => {
      if (this._live !== ws) authClose = ev.code;
      this._onClose(ws, ev.code);
    };
    try {
      this.identity = await this._send(ws, "auth", null, token ? { token } : {}, this.requestTimeoutMs);
    } catch (err) {
      ws.close();
      if (AUTH_CLOSE_CODES.has(authClose)) throw new GreenroomError("AUTH_FAILED", `server refused the token (close code ${authClose})`);
      throw err;
    }
    this._live = ws;
    this.stats.connects += 1;
    this._setState("open");
    for (const w of this._waiters.splice(0)) w.resolve();
    this._scheduleRefresh();
  }

  _onClose(ws, code) {
    this._failPending(new GreenroomError("DISCONNECTED", `connection closed (code ${code})`), ws);
    if (this._closed || this._live !== ws) return;
    this._live = null;
    clearTimeout(this._refreshTimer);
    this._setState("reconnecting");
    if (!this._reconnecting) this._reconnect(code);
  }

  async _reconnect(code) {
    const giveUp = (err) => {
      this.failure = err;
      this.close();
    };
    if (!this.policy.enabled) return giveUp(new GreenroomError("DISCONNECTED", `connection closed (code ${code})`));
    if (AUTH_CLOSE_CODES.has(code) && !this.tokenProvider) {
      return giveUp(new GreenroomError("AUTH_FAILED", `server refused the token (close code ${code})`));
    }
    this._reconnecting = true;
    for (const room of this._rooms.values()) room.joining = true;
    try {
      for (let attempt = 1; !this._closed; attempt++) {
        if (this.policy.maxAttempts != null && attempt > this.policy.maxAttempts) {
          return giveUp(new GreenroomError("DISCONNECTED", `gave up after ${attempt - 1} reconnect attempts`));
        }
        await new Promise((r) => setTimeout(r, backoffDelay(this.policy, attempt)));
        if (this._closed) return;
        try {
          await this._open();
          for (const [name, room] of [...this._rooms]) await this._rejoinOrDrop(name, room);
          this.stats.reconnects += 1;
          return;
        } catch (err) {
          const authRefused = ["INVALID_TOKEN", "TOKEN_EXPIRED", "AUTH_FAILED"].includes(err.code);
          if (authRefused && !this.tokenProvider) return giveUp(err);
          if (this._ws && this._ws.readyState <= 1) this._ws.close();
          this._live = null;
          this._setState("reconnecting");
        }
      }
    } finally {
      this._reconnecting = false;
    }
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = this.identity && this.identity.expires_at;
    if (!this.tokenProvider || typeof exp !== "number") return;
    const delay = Math.max(0, exp * 1000 - this.refreshMarginMs - Date.now());
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this.tokenProvider();
        const ws = this._live;
        if (!ws) return; // reconnecting authenticates with a fresh token anyway
        this.identity = await this._send(ws, "auth", null, { token }, this.requestTimeoutMs);
        this.token = token;
        this._scheduleRefresh();
      } catch (err) {
        console.warn("greenroom token refresh failed", err);
      }
    }, delay);
  }

  // --- requests ---------------------------------------------------------------------------

  /** Send one op and resolve with the reply's data; waits for the socket while reconnecting. */
  async request(op, room = null, data = {}, { timeoutMs } = {}) {
    const timeout = timeoutMs ?? this.requestTimeoutMs;
    const deadline = Date.now() + timeout;
    if (this._closed) throw new GreenroomError("CLOSED", "socket is closed");
    if (!this._live) {
      await new Promise((resolve, reject) => {
        const waiter = { resolve, reject };
        this._waiters.push(waiter);
        setTimeout(() => {
          const i = this._waiters.indexOf(waiter);
          if (i >= 0) {
            this._waiters.splice(i, 1);
            reject(new GreenroomError("TIMEOUT", `not connected within ${timeout} ms`));
          }
        }, timeout);
      });
    }
    return this._send(this._live, op, room, data, Math.max(0, deadline - Date.now()));
  }

  _send(ws, op, room, data, timeoutMs) {
    const ref = this._nextRef++;
    const envelope = { op, ref, data: data || {} };
    if (room) envelope.room = room;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new GreenroomError("TIMEOUT", `no reply to ${op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(ref, { resolve, reject, timer, ws });
      try {
        ws.send(JSON.stringify(envelope));
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(ref);
        reject(new GreenroomError("DISCONNECTED", `could not send ${op}: ${err}`));
      }
    });
  }

  _failPending(err, ws = null) {
    for (const [ref, p] of this._pending) {
      if (ws && p.ws !== ws) continue;
      clearTimeout(p.timer);
      this._pending.delete(ref);
      p.reject(err);
    }
  }

  /** Join a room; later rejoins resume from the last event seen. Resolves with the join reply. */
  async join(name, data = {}) {
    let room = this._rooms.get(name);
    if (!room) {
      room = { epoch: null, offset: 0, joining: true, held: [], joinData: { ...data } };
      this._rooms.set(name, room);
    }
    room.joining = true;
    let reply;
    try {
      reply = await this.request("join", name, { ...data });
    } catch (err) {
      if (room.epoch === null) this._rooms.delete(name);
      else room.joining = false;
      throw err;
    }
    this._joined(name, room, reply);
    return reply;
  }

  async leave(name) {
    if (this._rooms.delete(name)) await this.request("leave", name);
  }

  position(name) {
    const room = this._rooms.get(name);
    return room ? { epoch: room.epoch, offset: room.offset } : null;
  }

  // --- events -----------------------------------------------------------------------------

  _dispatch(raw) {
    let msg;
    try {
      msg = JSON.parse(typeof raw === "string" ? raw : new TextDecoder().decode(raw));
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    if (msg.op === "reply") {
      const p = this._pending.get(msg.ref);
      if (!p) return;
      clearTimeout(p.timer);
      this._pending.delete(msg.ref);
      if (msg.ok) p.resolve(msg.data && typeof msg.data === "object" ? msg.data : {});
      else {
        const e = msg.error || {};
        p.reject(new GreenroomError(String(e.code || "ERROR"), String(e.message || ""), e.details));
      }
    } else if (msg.op === "event") {
      const event = eventOf(msg, msg.room);
      if (event) this._onLive(event);
    }
  }

  _onLive(event) {
    const room = this._rooms.get(event.room);
    if (event.type === "room.reset" && room && !room.joining) {
      // The server lost events history cannot give back: rejoin with `since`; its answer
      // (recovered: false) reaches listeners as "rejoined", so they refetch state.
      return this._resync(event.room, room, event);
    }
    if (!room || event.offset === 0) return this._deliver(event);
    if (room.joining) {
      if (room.held.length < this.maxHeldEvents) room.held.push(event);
      return;
    }
    if (event.offset <= room.offset) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    if (event.offset > room.offset + 1) {
      this.stats.gaps += 1;
      this._resync(event.room, room, event);
      return;
    }
    room.offset = event.offset;
    this._deliver(event);
  }

  _joined(name, room, reply) {
    const epoch = String(reply.epoch ?? "");
    const top = Number(reply.offset ?? 0);
    const recovered = Boolean(reply.recovered);
    const events = (reply.events || []).map((e) => eventOf(e, name)).filter(Boolean);
    if (epoch !== room.epoch || !recovered) {
      const first = events.filter((e) => e.offset).map((e) => e.offset);
      room.offset = (first.length ? Math.min(...first) : top + 1) - 1;
    }
    room.epoch = epoch;
    for (const e of events) {
      if (e.offset === 0) this._deliver(e);
      else if (e.offset <= room.offset) this.stats.duplicatesDropped += 1;
      else {
        room.offset = e.offset;
        this._deliver(e);
      }
    }
    room.offset = Math.max(room.offset, top);
    const held = room.held;
    room.held = [];
    room.joining = false;
    // Live events that arrived before the reply continue the stream from `top`, or reveal a gap.
    for (let i = 0; i < held.length; i++) {
      const e = held[i];
      if (e.offset === 0) this._deliver(e);
      else if (e.offset <= room.offset) this.stats.duplicatesDropped += 1;
      else if (e.offset === room.offset + 1) {
        room.offset = e.offset;
        this._deliver(e);
      } else {
        this.stats.gaps += 1;
        this._resync(name, room, e);
        room.held.push(...held.slice(i + 1));
        break;
      }
    }
  }

  async _rejoin(name, room) {
    const data = { ...room.joinData };
    const since = { epoch: room.epoch, offset: room.offset };
    if (room.epoch !== null) data.since = since;
    room.joining = true;
    const reply = await this.request("join", name, data);
    this._emit(REJOINED, { room: name, recovered: Boolean(reply.recovered), epoch: reply.epoch,
                           offset: reply.offset, since, reply });
    this._joined(name, room, reply);
  }

  async _rejoinOrDrop(name, room) {
    try {
      await this._rejoin(name, room);
    } catch (err) {
      if (TRANSIENT.has(err.code)) throw err;
      this._rooms.delete(name);
      this._emit("rejoin_failed", { room: name, code: err.code, message: err.reason });
    }
  }

  _resync(name, room, trigger) {
    room.joining = true;
    room.held.push(trigger);
    (async () => {
      try {
        await this.request("leave", name);
        await this._rejoinOrDrop(name, room);
      } catch (err) {
        console.warn(`greenroom resync of ${name} failed`, err);
        room.joining = false;
      }
    })();
  }
}
