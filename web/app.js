// The Tidings web UI: sign in, connect, and wire the conversations and the bell to the client.
//
// Everything goes through the public protocol (tidings.js) and the public HTTP API (the dev-mode
// token endpoint). Extra nodes to fail over to can be given as `?nodes=host:port,host:port`
// (or full ws:// URLs); the node that served the page is always tried first.

import { Conversations } from "./conversations.js";
import { NotificationBell } from "./notifications.js";
import { Prefs, ROOM_RE, USER_RE } from "./store.js";
import { State, TidingsClient } from "./tidings.js";

const SESSION_KEY = "tidings:session"; // this tab's {user, token}: a reload stays signed in
const TOKEN_MARGIN = 60_000; // ms before expiry at which a new token is fetched

const $ = (id) => document.getElementById(id);

/** The WebSocket URLs to use: this page's node first, then any from `?nodes=`. */
export function nodeUrls(location = window.location) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const own = `${scheme}://${location.host}/ws`;
  const params = new URLSearchParams(location.search);
  const extra = params
    .getAll("nodes")
    .flatMap((value) => value.split(","))
    .map((value) => value.trim())
    .filter(Boolean)
    .map((value) => {
      if (/^wss?:\/\//.test(value)) return value;
      if (/^https?:\/\//.test(value)) return `${value.replace(/^http/, "ws").replace(/\/+$/, "")}/ws`;
      return `${scheme}://${value}/ws`;
    });
  return [...new Set([own, ...extra])];
}

/** The `exp` of a JWT in ms (0 if unreadable). The server verifies tokens; this only schedules refreshes. */
function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return Number(JSON.parse(atob(payload)).exp) * 1000 || 0;
  } catch {
    return 0;
  }
}

async function fetchDevToken(user) {
  const response = await fetch("/api/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 404) throw new Error("This server does not hand out dev tokens (TIDINGS_DEV is off).");
    throw new Error(body?.error?.message ?? `The server answered ${response.status}.`);
  }
  return body.token;
}

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
    return session && USER_RE.test(session.user) && typeof session.token === "string" ? session : null;
  } catch {
    return null;
  }
}

function saveSession(session) {
  try {
    if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // storage disabled: sign in again after a reload
  }
}

/** One signed-in session: the client, the conversations, the bell and the status line. */
class ChatSession {
  constructor(session) {
    this.session = session;
    this.client = new TidingsClient({ urls: nodeUrls(), token: () => this.token() });
    this.conversations = new Conversations(this.client, session.user, new Prefs(session.user));
    this.bell = new NotificationBell(this.client);
    this.client.on("state", (detail) => this.renderStatus(detail));
  }

  start() {
    this.client.connect();
    this.conversations.start();
  }

  stop() {
    this.client.close();
    this.conversations.stop();
    this.bell.stop();
  }

  /** The token for the next connection attempt: the cached one while it is fresh. */
  async token() {
    const { user, token } = this.session;
    if (token && tokenExpiry(token) - Date.now() > TOKEN_MARGIN) return token;
    const fresh = await fetchDevToken(user);
    this.session = { user, token: fresh };
    saveSession(this.session);
    return fresh;
  }

  renderStatus(detail) {
    const status = $("status");
    const text = $("status-text");
    const node = $("status-node");
    status.dataset.state = detail.state;
    $("chat").dataset.connection = detail.state;
    switch (detail.state) {
      case State.CONNECTING:
        text.textContent = "Connecting…";
        break;
      case State.CONNECTED: {
        let line = detail.reconnected ? "Reconnected" : "Connected";
        if (detail.reconnected) line += ` · recovered ${detail.missed} missed message${detail.missed === 1 ? "" : "s"}`;
        if (detail.unrecovered?.length) line += " · history reloaded";
        text.textContent = line;
        status.dataset.missed = String(detail.missed ?? 0);
        status.dataset.node = detail.node;
        node.textContent = `node ${detail.node}`;
        break;
      }
      case State.RECONNECTING: {
        const seconds = (detail.delay / 1000).toFixed(1);
        text.textContent = `Reconnecting… (attempt ${detail.attempt}, next try in ${seconds} s)`;
        node.textContent = "";
        break;
      }
      case State.CLOSED:
        text.textContent = detail.code === 1000 ? "Disconnected" : `Disconnected: ${detail.reason || `code ${detail.code}`}`;
        node.textContent = "";
        if (detail.code >= 4500) showSignIn(`Signed out: ${detail.reason || "the server refused this session"}.`);
        break;
      default:
        text.textContent = "Not connected";
    }
  }
}

let current = null;

function showChat(session) {
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("me-name").textContent = session.user;
  current = new ChatSession(session);
  current.start();
}

function showSignIn(message = "") {
  if (current) {
    const ending = current;
    current = null;
    ending.stop();
  }
  saveSession(null);
  $("chat").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("signin-name").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("signin-name");
  const user = input.value.trim();
  const error = $("signin-error");
  if (!USER_RE.test(user)) {
    error.textContent = "Use 1 to 100 letters, digits, “_”, “.”, “@” or “-”.";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  error.textContent = "";
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const session = { user, token: await fetchDevToken(user) };
    saveSession(session);
    showChat(session);
    $("composer-input").focus();
  } catch (failure) {
    error.textContent = failure.message;
  } finally {
    button.disabled = false;
  }
}

function bindForms() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => showSignIn());

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("join-name");
    const name = input.value.trim().replace(/^#/, "").replace(/^room:/, "");
    if (!ROOM_RE.test(name)) {
      $("join-error").textContent = "Room names use letters, digits and . _ @ -";
      input.setAttribute("aria-invalid", "true");
      return;
    }
    input.removeAttribute("aria-invalid");
    $("join-error").textContent = "";
    input.value = "";
    closeNav();
    current?.conversations.joinRoom(name);
  });

  $("dm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("dm-name");
    const user = input.value.trim().replace(/^@/, "");
    if (!USER_RE.test(user) || user === current?.session.user) {
      $("dm-error").textContent = user === current?.session.user ? "That is you." : "Names use letters, digits, _ . @ and -";
      input.setAttribute("aria-invalid", "true");
      return;
    }
    input.removeAttribute("aria-invalid");
    $("dm-error").textContent = "";
    input.value = "";
    closeNav();
    current?.conversations.openDm(user);
  });

  const composer = $("composer-input");
  const submit = async () => {
    const text = composer.value;
    if (!text.trim() || !current) return;
    composer.value = "";
    autoGrow(composer);
    const sent = await current.conversations.send(text);
    if (!sent && !composer.value) {
      composer.value = text; // give the text back so nothing typed is lost
      autoGrow(composer);
    }
  };
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  composer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  composer.addEventListener("input", () => {
    autoGrow(composer);
    if (composer.value.trim()) current?.conversations.typed();
  });

  // Phone width: the conversation list is a drawer.
  $("nav-toggle").addEventListener("click", () => {
    const open = $("nav-toggle").getAttribute("aria-expanded") !== "true";
    $("nav-toggle").setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("nav-open", open);
    if (open) $("sidebar").querySelector("button, input")?.focus();
  });
  $("sidebar").addEventListener("click", (event) => {
    if (event.target.closest(".channel-button")) closeNav();
  });
  document.addEventListener("click", (event) => {
    const inside = event.target.closest?.("#sidebar, #nav-toggle");
    if (!inside && document.body.classList.contains("nav-open")) closeNav();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && document.body.classList.contains("nav-open")) {
      closeNav();
      $("nav-toggle").focus();
    }
  });
  const narrow = window.matchMedia("(max-width: 720px)");
  $("people-details").open = !narrow.matches;
}

function closeNav() {
  document.body.classList.remove("nav-open");
  $("nav-toggle").setAttribute("aria-expanded", "false");
}

function autoGrow(textarea) {
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, 160)}px`;
}

bindForms();
const saved = loadSession();
if (saved) showChat(saved);
else showSignIn();
