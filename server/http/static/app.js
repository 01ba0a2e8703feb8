// The Greenroom web client: log in or register, live streams, a performer's streams, a stream's room.
// Plain DOM, no framework; every user-supplied string goes through textContent, never innerHTML.
import { GreenroomError, GreenroomSocket } from "/static/greenroom.js";

const SESSION_KEY = "greenroom.session";
const REFRESH_MARGIN_MS = 60_000;
const FEED_MAX = 300; // chat lines and tips kept in the page

const $ = (sel) => document.querySelector(sel);

// --- session and REST ---------------------------------------------------------------------

let session = loadSession();
let refreshing = null;

function loadSession() {
  try { return JSON.parse(localStorage.getItem(SESSION_KEY)) || null; } catch { return null; }
}

function saveSession(tokens) {
  session = tokens && {
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token,
    expires_at: Date.now() + tokens.expires_in * 1000,
    user: tokens.user,
  };
  if (session) localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else localStorage.removeItem(SESSION_KEY);
  renderWho();
}

/** A valid access token (refreshed when close to expiry), or null for a guest. */
async function accessToken() {
  if (!session) return null;
  if (session.expires_at - Date.now() > REFRESH_MARGIN_MS) return session.access_token;
  refreshing ??= api("POST", "/v1/auth/refresh", { refresh_token: session.refresh_token }, { auth: false })
    .then((tokens) => saveSession(tokens))
    .catch((err) => { saveSession(null); throw err; })
    .finally(() => { refreshing = null; });
  await refreshing;
  return session.access_token;
}

async function api(method, path, body = undefined, { auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && session) headers.Authorization = `Bearer ${await accessToken()}`;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = payload.error || {};
    throw new GreenroomError(e.code || `HTTP_${resp.status}`, e.message || resp.statusText, e.details);
  }
  return payload.data;
}

function flash(message, kind = "error") {
  const el = $("#flash");
  el.textContent = message;
  el.className = kind === "info" ? "info" : "";
  el.hidden = !message;
}

function describe(err) {
  if (err instanceof GreenroomError) {
    const fields = err.details?.errors?.map((e) => `${e.field}: ${e.issue}`).join("; ");
    return fields ? `${err.reason} (${fields})` : err.reason || err.code;
  }
  return String(err);
}

function renderWho() {
  const user = session?.user;
  $("#whoami").textContent = user ? `${user.display_name} (${user.role})` : "";
  $("#nav-login").hidden = Boolean(user);
  $("#logout").hidden = !user;
  $("#nav-perform").hidden = !user || !["performer", "admin"].includes(user.role);
}

// --- the socket: one per page session, guest or signed in ------------------------------------

let socket = null;

async function roomSocket() {
  if (socket && !socket.closed) return socket;
  socket = new GreenroomSocket("/ws", session ? { tokenProvider: accessToken } : {});
  socket.on("state", (state) => {
    const el = $("#socket-state");
    el.textContent = state === "open" ? "live" : state;
    el.className = `state ${state}`;
  });
  await socket.connect();
  return socket;
}

function dropSocket() {
  if (socket) socket.close();
  socket = null;
}

// --- pages --------------------------------------------------------------------------------

let leavePage = () => {};

async function route() {
  leavePage();
  leavePage = () => {};
  flash("");
  for (const page of document.querySelectorAll(".page")) page.hidden = true;
  const hash = window.location.hash || "#/";
  const watch = hash.match(/^#\/watch\/([0-9a-f-]{36})$/);
  try {
    if (hash === "#/login") return showLogin();
    if (hash === "#/perform") return await showPerform();
    if (watch) return await showWatch(watch[1]);
    return await showHome();
  } catch (err) {
    flash(describe(err));
  }
}

async function showHome() {
  $("#page-home").hidden = false;
  const list = $("#stream-list");
  list.replaceChildren();
  const streams = await api("GET", "/v1/streams?status=live&per_page=50");
  $("#stream-list-empty").hidden = streams.length > 0;
  for (const s of streams) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `#/watch/${s.id}`;
    const title = document.createElement("strong");
    title.textContent = s.title;
    const host = document.createElement("div");
    host.className = "host";
    host.textContent = `${s.host_name} · ${s.viewer_count} watching`;
    a.append(title, host);
    li.append(a);
    list.append(li);
  }
}

function showLogin() {
  $("#page-login").hidden = false;
}

async function showPerform() {
  if (!session) {
    window.location.hash = "#/login";
    return;
  }
  $("#page-perform").hidden = false;
  await renderMyStreams();
}

async function renderMyStreams() {
  const body = $("#my-streams tbody");
  const streams = await api("GET", `/v1/streams?status=all&host_id=${session.user.id}&sort=-created_at&per_page=50`);
  body.replaceChildren();
  for (const s of streams) {
    const tr = document.createElement("tr");
    const title = document.createElement("td");
    const link = document.createElement("a");
    link.href = `#/watch/${s.id}`;
    link.textContent = s.title;
    title.append(link);
    const status = document.createElement("td");
    status.textContent = s.status;
    const tokens = document.createElement("td");
    tokens.textContent = String(s.total_tokens_received);
    const actions = document.createElement("td");
    actions.append(...streamButtons(s, renderMyStreams));
    tr.append(title, status, tokens, actions);
    body.append(tr);
  }
}

function streamButtons(stream, after) {
  const buttons = [];
  const act = (label, path, cls = "") => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.className = cls;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        await api("POST", path);
        await after();
      } catch (err) {
        flash(describe(err));
        b.disabled = false;
      }
    });
    buttons.push(b);
  };
  if (stream.status === "created") act("Go live", `/v1/streams/${stream.id}/start`);
  if (stream.status !== "ended") act("End", `/v1/streams/${stream.id}/end`, "secondary");
  return buttons;
}

// --- a stream's room ------------------------------------------------------------------------

function appendCapped(list, item) {
  list.append(item);
  while (list.children.length > FEED_MAX) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function line(cls, ...parts) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  for (const [text, partCls] of parts) {
    const span = document.createElement("span");
    span.textContent = text;
    if (partCls) span.className = partCls;
    li.append(span);
  }
  return li;
}

async function showWatch(streamId) {
  $("#page-watch").hidden = false;
  const info = await api("POST", `/v1/streams/${streamId}/join`, undefined, { auth: Boolean(session) });
  const { stream, room } = info;
  $("#room-title").textContent = stream.title;
  $("#chat-log").replaceChildren();
  $("#tip-feed").replaceChildren();
  $("#top-tippers").replaceChildren();
  const setStatus = (status) => { $("#room-status").textContent = status; };
  const setViewers = (n) => { $("#room-viewers").textContent = `${n} watching`; };
  const setTotal = (n) => { $("#room-total").textContent = `${n} tokens`; };
  setStatus(stream.status);
  setViewers(stream.viewer_count);
  setTotal(stream.total_tokens_received);

  const controls = $("#room-controls");
  controls.replaceChildren();
  if (info.role === "performer") {
    const refresh = async () => {
      const s = await api("GET", `/v1/streams/${streamId}`);
      setStatus(s.status);
      controls.replaceChildren(...streamButtons(s, refresh));
    };
    controls.append(...streamButtons(stream, refresh));
  }

  const note = $("#chat-note");
  note.hidden = info.can_chat;
  note.textContent = session ? "You cannot chat in this room." : "Log in to chat and tip.";
  $("#chat-form").hidden = !info.can_chat;
  $("#tip-form").hidden = !info.can_tip;

  const sock = await roomSocket();
  const chatLog = $("#chat-log");
  const tipFeed = $("#tip-feed");
  const handlers = {
    "chat.message": (ev) => {
      const li = line("", [ev.data.author?.display_name ?? "?", "author"], [ev.data.text, "text"]);
      li.dataset.id = ev.data.id;
      appendCapped(chatLog, li);
    },
    "chat.deleted": (ev) => {
      const li = chatLog.querySelector(`li[data-id="${CSS.escape(ev.data.id)}"] .text`);
      if (li) {
        li.textContent = "message deleted";
        li.className = "deleted";
      }
    },
    "tip.received": (ev) => {
      // {id, from: {user_id, display_name}, amount, message, stream_total, top_tippers: [{display_name, total}]}
      const t = ev.data;
      const msg = t.message ? ` — ${t.message}` : "";
      appendCapped(tipFeed, line("", [t.from?.display_name ?? "?", "author"], [`tipped ${t.amount} tokens${msg}`, "text"]));
      if (typeof t.stream_total === "number") setTotal(t.stream_total);
      if (Array.isArray(t.top_tippers)) {
        $("#top-tippers").replaceChildren(...t.top_tippers.map((top) =>
          line("", [top.display_name, "author"], [` ${top.total}`, "text"])));
      }
    },
    "room.viewers": (ev) => setViewers(ev.data.count),
    "stream.started": () => {
      setStatus("live");
      appendCapped(chatLog, line("system", ["The stream is live.", ""]));
    },
    "stream.ended": (ev) => {
      setStatus("ended");
      if (typeof ev.data.total_tokens_received === "number") setTotal(ev.data.total_tokens_received);
      appendCapped(chatLog, line("system", ["The stream has ended.", ""]));
    },
    "member.joined": (ev) => appendCapped(chatLog, line("system", [`The ${ev.data.role} joined.`, ""])),
    "member.left": (ev) => appendCapped(chatLog, line("system", [`The ${ev.data.role} left.`, ""])),
  };
  const off = Object.entries(handlers).map(([type, fn]) => sock.on(type, (ev) => ev.room === room && fn(ev)));
  off.push(sock.on("rejoined", (r) => {
    if (r.room !== room) return;
    if (!r.recovered) {
      appendCapped(chatLog, line("system", ["Reconnected; some history was lost.", ""]));
      api("GET", `/v1/streams/${streamId}`).then((s) => { setStatus(s.status); setTotal(s.total_tokens_received); })
        .catch(() => {});
    }
  }));
  off.push(sock.on("rejoin_failed", (r) => r.room === room && flash(`Left the room: ${r.message}`)));
  const chatForm = $("#chat-form");
  const tipForm = $("#tip-form");
  const onChat = async (e) => {
    e.preventDefault();
    const input = chatForm.elements.text;
    try {
      await sock.request("chat.send", room, { text: input.value });
      input.value = "";
    } catch (err) {
      flash(describe(err));
    }
  };
  const onTip = async (e) => {
    e.preventDefault();
    const amount = Number.parseInt(tipForm.elements.amount.value, 10);
    const message = tipForm.elements.message.value;
    // The id makes a retry after a dropped connection the same tip, never a second one.
    const tip = { id: crypto.randomUUID(), amount, message };
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await sock.request("tip.send", room, tip);
        tipForm.reset();
        flash(`Tipped ${amount} tokens.`, "info");
        return;
      } catch (err) {
        if (!["DISCONNECTED", "TIMEOUT"].includes(err.code)) return flash(describe(err));
      }
    }
    flash("The tip could not be confirmed; check your wallet before sending again.");
  };
  leavePage = () => {
    for (const f of off) f();
    chatForm.removeEventListener("submit", onChat);
    tipForm.removeEventListener("submit", onTip);
    sock.leave(room).catch(() => {});
  };
  // The join reply's events (recent history) reach the listeners above like live ones.
  await sock.join(room);
  chatForm.addEventListener("submit", onChat);
  tipForm.addEventListener("submit", onTip);
}

// --- forms and start-up -----------------------------------------------------------------------

function formJson(form) {
  return Object.fromEntries(new FormData(form).entries());
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    saveSession(await api("POST", "/v1/auth/login", formJson(e.target), { auth: false }));
    dropSocket(); // the next room joins as the signed-in user
    window.location.hash = "#/";
  } catch (err) {
    flash(describe(err));
  }
});

$("#register-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const tokens = await api("POST", "/v1/auth/register", formJson(e.target), { auth: false });
    saveSession(tokens);
    dropSocket();
    window.location.hash = tokens.user.role === "performer" ? "#/perform" : "#/";
  } catch (err) {
    flash(describe(err));
  }
});

$("#create-stream-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const s = await api("POST", "/v1/streams", formJson(e.target));
    e.target.reset();
    window.location.hash = `#/watch/${s.id}`;
  } catch (err) {
    flash(describe(err));
  }
});

$("#logout").addEventListener("click", async () => {
  const refresh = session?.refresh_token;
  saveSession(null);
  dropSocket();
  if (refresh) await api("POST", "/v1/auth/logout", { refresh_token: refresh }, { auth: false }).catch(() => {});
  window.location.hash = "#/";
});

window.addEventListener("hashchange", route);
renderWho();
route();
