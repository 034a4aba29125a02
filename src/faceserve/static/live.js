// Live results on the guest's page: after a search, "Show me new photos as they arrive" keeps the searched
// face on the service for the event's day (a live search) and reads its stream of new matches. The face goes
// back as the search's live_token (sealed by the service): the selfie is not sent again. Each new
// photo slides into the results with a "new" mark. A dropped connection, or a phone that slept, reconnects
// with the last event id it saw (Last-Event-ID), so nothing is missed; Stop ends the live search.

import { api, openStream } from "./api.js";
import { photoCard } from "./cards.js";
import { $, describeError, el, plural } from "./ui.js";

// a search's token the service no longer takes: a new search of the same selfie gives a fresh one
const TOKEN_ADVICE = {
  live_token_expired: "That search was a while ago: search again, then turn this on.",
  live_token_invalid: "That search can no longer be watched: search again, then turn this on.",
  live_token_other_model: "That search can no longer be watched: search again, then turn this on.",
};

const RETRY_FIRST_MS = 1000;
const RETRY_MOST_MS = 30_000;

let state = null; // {sessionId, liveId, lastEventId, controller, retryMs, timer, added}

export function initLive() {
  $("live-toggle").addEventListener("change", async (event) => {
    if (event.target.checked) await start(event.target);
    else await stop();
  });
  $("live-stop").addEventListener("click", () => stop());
  // a phone that slept (or a tab in the background) reconnects when it is looked at again
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state && !state.controller) connect(0);
  });
  window.addEventListener("online", () => {
    if (state && !state.controller) connect(0);
  });
}

let currentSession = null;
let currentToken = null;

// after a search of one face (the largest or the one picked): offer live results for it with the search's
// live_token, which the service accepts for LIVE_TOKEN_MINUTES
export function offerLive(sessionId, liveToken) {
  currentSession = sessionId;
  currentToken = liveToken;
  $("live-status").textContent = "";
  $("live").hidden = false;
}

// a new selfie, another face or another event: what was live ends
export async function hideLive() {
  await stop();
  $("live").hidden = true;
}

async function start(toggle) {
  await stop();
  const status = $("live-status");
  status.textContent = "Starting…";
  toggle.disabled = true;
  try {
    const form = new FormData();
    form.append("probe_token", currentToken);
    const data = await api("POST", `/api/face/sessions/${encodeURIComponent(currentSession)}/live`, form);
    state = {
      sessionId: currentSession,
      liveId: data.live_id,
      lastEventId: null,
      controller: null,
      retryMs: RETRY_FIRST_MS,
      timer: null,
      added: 0,
    };
    toggle.checked = true;
    $("live-stop").hidden = false;
    showWatching();
    connect(0);
  } catch (error) {
    toggle.checked = false;
    status.textContent = TOKEN_ADVICE[error.code] || describeError(error);
  } finally {
    toggle.disabled = false;
  }
}

function showWatching() {
  const added = state.added;
  $("live-status").textContent =
    added === 0
      ? "Watching for new photos of you…"
      : `${plural(added, "new photo")} since you asked. Watching for more…`;
}

function eventsPath() {
  return `/api/face/sessions/${encodeURIComponent(state.sessionId)}/live/${encodeURIComponent(state.liveId)}/events`;
}

function connect(delayMs) {
  if (!state || state.controller) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => read(state), delayMs);
}

async function read(mine) {
  if (state !== mine || mine.controller) return;
  const controller = new AbortController();
  mine.controller = controller;
  let ended = false;
  try {
    const headers = mine.lastEventId ? { "Last-Event-ID": mine.lastEventId } : {};
    const response = await openStream(eventsPath(), headers, controller.signal);
    mine.retryMs = RETRY_FIRST_MS;
    if (state === mine) showWatching();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (dispatch(mine, block) === "end") ended = true;
      }
      if (ended) break;
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error.status === 404) ended = true; // expired, or ended elsewhere
    else if (error.status === 401 || error.status === 403) {
      ended = true;
      if (state === mine) $("live-status").textContent = describeError(error);
    }
  } finally {
    if (mine.controller === controller) mine.controller = null;
  }
  if (state !== mine || controller.signal.aborted) return;
  if (ended) {
    finished("Live results have ended. Search again to see new photos.");
    return;
  }
  // the connection dropped (a node restarting, a network change): again, a little later each time
  $("live-status").textContent = "Reconnecting…";
  connect(mine.retryMs);
  mine.retryMs = Math.min(mine.retryMs * 2, RETRY_MOST_MS);
}

// one event of the stream: its fields, as Server-Sent Events frame them
function dispatch(mine, block) {
  let id = null;
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a heartbeat
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "id") id = value;
    else if (name === "event") kind = value;
    else if (name === "data") data.push(value);
  }
  if (id) mine.lastEventId = id;
  if (kind === "end") return "end";
  if (kind === "match" && data.length) addMatch(mine, JSON.parse(data.join("\n")));
  return kind;
}

function addMatch(mine, match) {
  const list = $("matches");
  if (list.querySelector(`li[data-image-id="${CSS.escape(String(match.image_id))}"]`)) return;
  const card = photoCard(match, "New photo of you");
  card.classList.add("new");
  card.prepend(el("span", { class: "new-mark" }, "New"));
  list.prepend(card);
  mine.added += 1;
  showWatching();
}

function finished(message) {
  if (state) clearTimeout(state.timer);
  state = null;
  $("live-toggle").checked = false;
  $("live-stop").hidden = true;
  $("live-status").textContent = message;
}

// the guest's Stop (or a new search): the stream closes and the live search is deleted on the service
async function stop() {
  const ending = state;
  if (!ending) return;
  state = null;
  clearTimeout(ending.timer);
  if (ending.controller) ending.controller.abort();
  $("live-toggle").checked = false;
  $("live-stop").hidden = true;
  $("live-status").textContent = "Stopped.";
  try {
    await api(
      "DELETE",
      `/api/face/sessions/${encodeURIComponent(ending.sessionId)}/live/${encodeURIComponent(ending.liveId)}`,
    );
  } catch {
    // expired or ended already: nothing left to end
  }
}
