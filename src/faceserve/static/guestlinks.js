// An event's guest links: each is a search-only key bound to the event, made with a lifetime (30 days unless
// the organiser picks another), listed while it works, revocable, and shown as a QR code for the venue.
// The service keeps only a key's hash, so a link can be copied or drawn only in the tab that made it.

import { api, apiBlob, currentKey } from "./api.js";
import { confirmAction } from "./dialog.js";
import { $, describeError, el } from "./ui.js";

const made = new Map(); // event id -> {url, prefix} of the link made in this tab
let current = null; // {id, name}
let qrUrl = null; // the object URL of the QR code shown
let generation = 0; // answers about an event left meanwhile are dropped

function defaultDays() {
  const meta = document.querySelector('meta[name="faceserve-guest-link-days"]');
  const days = Number.parseInt(meta ? meta.content : "", 10);
  return Number.isFinite(days) && days > 0 ? days : 30;
}

export function initGuestLinks() {
  const select = $("link-days");
  const days = String(defaultDays());
  if (![...select.options].some((option) => option.value === days)) {
    select.append(el("option", { value: days }, `${days} days`)); // GUEST_LINK_DAYS outside the usual choices
  }
  select.value = days;
  $("copy-link").addEventListener("click", copyGuestLink);
  $("show-qr").addEventListener("click", showQr);
  $("qr-print").addEventListener("click", () => window.print());
}

export async function showGuestLinks(session) {
  current = session;
  generation += 1;
  const link = made.get(session.id);
  $("guest-link").hidden = !link;
  $("guest-link").value = link ? link.url : "";
  $("link-actions").hidden = !link;
  if (link) $("open-link").href = link.url;
  $("link-status").textContent = "";
  hideQr();
  await listLinks();
}

function hideQr() {
  $("qr").hidden = true;
  if (qrUrl) URL.revokeObjectURL(qrUrl);
  qrUrl = null;
}

function dateText(iso) {
  return new Date(iso).toLocaleDateString(undefined, { day: "numeric", month: "short", year: "numeric" });
}

function live(key) {
  return !key.revoked_at && (!key.expires_at || new Date(key.expires_at) > new Date());
}

// The event's links that still work, newest first; hidden where the key in use may not list keys.
async function listLinks() {
  const list = $("guest-links");
  if (!currentKey() || !current) {
    list.replaceChildren();
    return;
  }
  const mine = generation;
  let keys;
  try {
    keys = (await api("GET", `/api/face/keys?session=${encodeURIComponent(current.id)}`)).keys;
  } catch {
    if (mine === generation) list.replaceChildren(); // not an admin key: the links are not this person's to see
    return;
  }
  if (mine !== generation) return;
  const links = keys.filter((key) => live(key) && key.scopes.length === 1 && key.scopes[0] === "search").reverse();
  if (!links.length) {
    list.replaceChildren(el("li", { class: "muted" }, "No guest links work now."));
    return;
  }
  list.replaceChildren(...links.map(linkItem));
}

function linkItem(key) {
  const shownHere = made.get(current.id);
  const parts = [`made ${dateText(key.created_at)}`];
  parts.push(key.expires_at ? `works until ${dateText(key.expires_at)}` : "never expires");
  if (key.last_used_at) parts.push(`last used ${dateText(key.last_used_at)}`);
  const revoke = el("button", { type: "button", class: "secondary danger" }, "Revoke");
  revoke.addEventListener("click", () => revokeLink(key));
  return el(
    "li",
    { class: "link-item", "data-prefix": key.prefix },
    el(
      "div",
      {},
      el("span", { class: "name" }, shownHere && shownHere.prefix === key.prefix ? "Link above" : "Guest link"),
      el("code", { class: "prefix" }, key.prefix),
      el("span", { class: "muted dates" }, parts.join(" · ")),
    ),
    revoke,
  );
}

async function revokeLink(key) {
  const session = current;
  const done = await confirmAction({
    title: "Revoke this guest link?",
    body: [
      el("p", {}, "Guests who have it can no longer search this event or see its people."),
      el("p", {}, "The photos stay. Make a new link to share again."),
    ],
    action: "Revoke",
    run: () => api("DELETE", `/api/face/keys/${encodeURIComponent(key.prefix)}`),
  });
  if (!done || current !== session) return;
  const link = made.get(session.id);
  if (link && link.prefix === key.prefix) {
    made.delete(session.id);
    await showGuestLinks(session);
  } else {
    await listLinks();
  }
}

// With a key in use, the link carries a new search-only key bound to this event that works for the chosen
// number of days (made through the keys API, which needs an admin key); without one the service runs
// without keys and the event id is enough.
async function makeGuestLink(session) {
  const base = `${location.origin}${location.pathname}#session=${session.id}`;
  if (!currentKey()) return { url: base, prefix: null, note: "Anyone with this link can search this event." };
  const days = Number($("link-days").value);
  try {
    const created = await api("POST", "/api/face/keys", {
      name: `guest link: ${session.name}`,
      scopes: ["search"],
      sessions: [session.id],
      expires_in_days: days,
    });
    return {
      url: `${base}&key=${encodeURIComponent(created.key)}`,
      prefix: created.prefix,
      note: `The link can only search this event, for ${days === 1 ? "1 day" : `${days} days`}.`,
    };
  } catch (error) {
    if (error.status === 404 || error.status === 405) {
      return {
        url: base,
        prefix: null,
        note: "This service has no keys API: guests need a search key of their own.",
      };
    }
    throw error;
  }
}

async function copyGuestLink() {
  if (!current) return;
  const status = $("link-status");
  const session = current;
  let link = made.get(session.id);
  try {
    if (!link) {
      link = await makeGuestLink(session);
      made.set(session.id, link);
      status.textContent = link.note;
    }
  } catch (error) {
    status.textContent = `No guest link: ${describeError(error)}`;
    return;
  }
  if (current !== session) return; // another event was opened meanwhile
  const field = $("guest-link");
  field.value = link.url;
  field.hidden = false;
  $("open-link").href = link.url;
  $("link-actions").hidden = false;
  listLinks();
  try {
    await navigator.clipboard.writeText(link.url);
    status.textContent = `Copied. ${status.textContent}`;
  } catch {
    // no clipboard API (plain http on a LAN address): selected, ready for the user's own copy
    field.select();
    status.textContent = `Copy the link above. ${status.textContent}`;
  }
}

// The service draws the code (admins only; the link goes in the body, never in a URL a log keeps)
async function showQr() {
  const session = current;
  const link = session && made.get(session.id);
  if (!link) return;
  try {
    const svg = await apiBlob("POST", "/api/face/qr", { text: link.url });
    if (current !== session) return;
    hideQr();
    qrUrl = URL.createObjectURL(svg);
    $("qr-image").src = qrUrl;
    $("qr-download").href = qrUrl;
    $("qr-download").download = `guest-link-${session.id}.svg`;
    $("qr").hidden = false;
  } catch (error) {
    $("link-status").textContent = `No QR code: ${describeError(error)}`;
  }
}
