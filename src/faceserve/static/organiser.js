// The organiser's view (#manage=ID): create or pick an event, rename or delete it, drop photos in, see and
// delete them, make and revoke guest links.

import { api, uploadFile } from "./api.js";
import { confirmAction } from "./dialog.js";
import { initEventPhotos, refreshEventPhotos, showEventPhotos } from "./eventphotos.js";
import { initGuestLinks, showGuestLinks } from "./guestlinks.js";
import { peopleView } from "./people.js";
import { $, describeError, el, plural, showNotice } from "./ui.js";

// Files sent at once: one request per file, so each shows its own progress and error. Two keep the
// connection busy while the service finds faces in the previous one; more only queue on the server.
const PARALLEL_UPLOADS = 2;
// 503 busy and 429 answers say when to come back (Retry-After); a file is tried this many times in all
const MAX_TRIES = 5;

let current = null; // the event being managed: {id, name}
const queue = [];
let running = 0;
const totals = { queued: 0, done: 0, failed: 0 };
let people = null; // the event's people: browse, merge two, take a face out

export function initOrganiser() {
  people = peopleView($("manage-people"), { editable: true, heading: "People" });
  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("session-name");
    try {
      const session = await api("POST", "/api/face/sessions", { name: input.value });
      input.value = "";
      await loadSessions();
      await openSession(session.id);
    } catch (error) {
      showNotice(describeError(error));
    }
  });
  initGuestLinks();
  initEventPhotos({
    changed: () => {
      refreshCounts();
      people.refresh();
    },
  });
  $("rename-event").addEventListener("click", startRename);
  $("rename-cancel").addEventListener("click", endRename);
  $("rename-form").addEventListener("submit", rename);
  $("delete-event").addEventListener("click", deleteEvent);
  for (const id of ["pick-files", "pick-folder"]) {
    $(id).addEventListener("change", (event) => {
      enqueue([...event.target.files]);
      event.target.value = "";
    });
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    enqueue(await droppedFiles(event.dataTransfer));
  });
}

export async function showOrganiser(manageId) {
  $("guest").hidden = true;
  $("organiser").hidden = false;
  await loadSessions();
  if (manageId) await openSession(manageId);
}

async function loadSessions() {
  let sessions;
  try {
    sessions = (await api("GET", "/api/face/sessions")).sessions;
  } catch (error) {
    showNotice(describeError(error));
    return;
  }
  const items = sessions
    .slice()
    .reverse() // newest first: the event being set up now is the one wanted
    .map((session) =>
      el(
        "li",
        {},
        el(
          "button",
          { type: "button", class: "session", "data-id": session.id },
          el("span", { class: "name" }, session.name),
          el("span", { class: "date" }, new Date(session.created_at).toLocaleDateString()),
        ),
      ),
    );
  $("sessions").replaceChildren(...items);
  for (const button of $("sessions").querySelectorAll("button")) {
    button.addEventListener("click", () => openSession(Number(button.dataset.id)));
  }
  if (!sessions.length) $("sessions").replaceChildren(el("li", { class: "muted" }, "No events yet: create one."));
  markCurrent();
}

function markCurrent() {
  for (const button of $("sessions").querySelectorAll("button")) {
    button.classList.toggle("current", current !== null && Number(button.dataset.id) === current.id);
  }
}

async function openSession(id) {
  let session;
  try {
    session = await api("GET", `/api/face/sessions/${encodeURIComponent(id)}`);
  } catch (error) {
    showNotice(describeError(error));
    return;
  }
  showNotice("");
  current = { id: session.id, name: session.name };
  history.replaceState(null, "", `#manage=${session.id}`);
  $("manage").hidden = false;
  $("manage-title").textContent = session.name;
  endRename();
  showCounts(session);
  markCurrent();
  await Promise.all([showGuestLinks(current), showEventPhotos(session.id), people.show(session.id)]);
}

// --- rename and delete --------------------------------------------------------------------------------

function startRename() {
  if (!current) return;
  $("rename-input").value = current.name;
  $("rename-form").hidden = false;
  $("rename-input").focus();
  $("rename-input").select();
}

function endRename() {
  $("rename-form").hidden = true;
}

async function rename(event) {
  event.preventDefault();
  const session = current;
  try {
    const renamed = await api("PATCH", `/api/face/sessions/${encodeURIComponent(session.id)}`, {
      name: $("rename-input").value,
    });
    session.name = renamed.name;
  } catch (error) {
    showNotice(describeError(error));
    return;
  }
  showNotice("");
  endRename();
  if (current === session) $("manage-title").textContent = session.name;
  await loadSessions();
}

async function deleteEvent() {
  const session = current;
  if (!session) return;
  const done = await confirmAction({
    title: `Delete “${session.name}”?`,
    body: [
      el("p", {}, "Its photos, faces and people are deleted and its guest links stop working."),
      el("p", {}, "This cannot be undone."),
    ],
    action: "Delete event",
    run: () => api("DELETE", `/api/face/sessions/${encodeURIComponent(session.id)}`),
  });
  if (!done) return;
  if (current === session) {
    current = null;
    $("manage").hidden = true;
    history.replaceState(null, "", location.pathname + location.search);
  }
  await loadSessions();
}

function showCounts(session) {
  const photos = plural(session.image_count, "photo");
  $("manage-counts").textContent = `${photos}, ${plural(session.face_count, "face")}`;
}

async function refreshCounts() {
  if (!current) return;
  try {
    showCounts(await api("GET", `/api/face/sessions/${encodeURIComponent(current.id)}`));
  } catch {
    // the counts are a nicety; the per-file rows already say what happened
  }
}

// --- uploads ----------------------------------------------------------------------------------------

function visible(file) {
  // .DS_Store, Thumbs.db and friends come along with dropped folders; they are not photos of the event
  const name = file.webkitRelativePath || file.name;
  return !name.split("/").some((part) => part.startsWith(".")) && file.name !== "Thumbs.db";
}

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function filesOf(entry) {
  if (entry.isFile) return [await new Promise((resolve, reject) => entry.file(resolve, reject))];
  const reader = entry.createReader();
  const files = [];
  // readEntries answers in batches (100 in Chromium) until it answers none
  for (let batch = await readEntries(reader); batch.length; batch = await readEntries(reader)) {
    for (const child of batch) files.push(...(await filesOf(child)));
  }
  return files;
}

async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items]
    .filter((item) => item.kind === "file")
    .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
    .filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const files = [];
  for (const entry of entries) files.push(...(await filesOf(entry)));
  return files;
}

function sizeText(bytes) {
  return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

function enqueue(files) {
  if (!current) return;
  const chosen = files.filter(visible).sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  for (const file of chosen) {
    const progress = el("progress", { max: "1", value: "0" });
    const state = el("span", { class: "state" }, "waiting");
    const row = el(
      "li",
      { class: "upload waiting", "data-name": file.name },
      el("span", { class: "file" }, file.webkitRelativePath || file.name),
      el("span", { class: "size" }, sizeText(file.size)),
      progress,
      state,
    );
    $("uploads").append(row);
    queue.push({ file, sessionId: current.id, row, progress, state, tries: 0 });
  }
  totals.queued += chosen.length;
  showSummary();
  pump();
}

function showSummary() {
  const left = totals.queued - totals.done - totals.failed;
  const parts = [`${totals.done} of ${totals.queued} uploaded`];
  if (totals.failed) parts.push(`${totals.failed} failed`);
  if (left) parts.push(`${left} to go`);
  $("upload-summary").textContent = totals.queued ? parts.join(" · ") : "";
}

function pump() {
  while (running < PARALLEL_UPLOADS && queue.length) {
    running += 1;
    send(queue.shift()).finally(() => {
      running -= 1;
      pump();
      if (!running && !queue.length) {
        refreshCounts();
        refreshEventPhotos();
        people.refresh(); // new faces join their people at once
      }
    });
  }
}

function setState(job, className, text) {
  job.row.className = `upload ${className}`;
  job.state.textContent = text;
}

async function send(job) {
  job.tries += 1;
  setState(job, "sending", "uploading");
  try {
    const image = await uploadFile(job.sessionId, job.file, (fraction) => {
      if (fraction < 1) {
        job.progress.value = fraction;
        job.state.textContent = `uploading ${Math.round(100 * fraction)}%`;
      } else {
        job.progress.removeAttribute("value"); // indeterminate: the service is looking for faces
        job.state.textContent = "finding faces…";
      }
    });
    job.progress.value = 1;
    const faces = plural(image.faces, "face");
    setState(job, "done", image.created === false ? `already here (${faces})` : faces);
    totals.done += 1;
  } catch (error) {
    if ((error.status === 503 || error.status === 429) && job.tries < MAX_TRIES) {
      const wait = error.retryAfter ?? 2;
      setState(job, "waiting", `service busy, retrying in ${wait} s`);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      queue.unshift(job);
      return;
    }
    job.progress.value = 0;
    setState(job, "failed", describeError(error));
    totals.failed += 1;
  }
  showSummary();
}
