// An event's photos for its organiser: a grid of ?w= thumbnails, 48 at a time by the API's keyset pages
// ("More photos"), each with a tick box; the ticked ones are deleted together after a confirmation.

import { api } from "./api.js";
import { sizedSources } from "./cards.js";
import { confirmAction } from "./dialog.js";
import { $, describeError, el, plural } from "./ui.js";

const PHOTOS_PAGE = 48; // 12 rows of 4 on a phone, 6 of 8 on a desktop
// tiles are 80-120 px squares: these widths serve them at 1x and 2x
const TILE_WIDTHS = [128, 240];
// deletes sent at once: each removes files and index entries; more only queue on the service
const PARALLEL_DELETES = 4;

let sessionId = null;
let cursor = null; // the next page's `after`
let generation = 0; // answers of an event left meanwhile are dropped
const selected = new Set(); // image ids ticked
let onChange = () => {}; // after a delete: the counts and the people change too

export function initEventPhotos({ changed }) {
  onChange = changed;
  $("photos-more").addEventListener("click", () => loadPage(false));
  $("photos-clear").addEventListener("click", () => {
    selected.clear();
    for (const box of $("photo-grid").querySelectorAll("input")) box.checked = false;
    showSelection();
  });
  $("photos-delete").addEventListener("click", deleteSelected);
}

export async function showEventPhotos(id) {
  sessionId = id;
  await loadPage(true);
}

export async function refreshEventPhotos() {
  if (sessionId !== null) await loadPage(true);
}

function showSelection() {
  for (const tile of $("photo-grid").children) tile.classList.toggle("selected", selected.has(Number(tile.dataset.imageId)));
  const any = $("photo-grid").children.length > 0;
  $("photos-selected").textContent = selected.size
    ? `${plural(selected.size, "photo")} selected`
    : any
      ? "Tick photos to delete them."
      : "";
  $("photos-delete").hidden = !selected.size;
  $("photos-clear").hidden = !selected.size;
}

function tile(image) {
  const box = el("input", { type: "checkbox", "aria-label": `Select ${image.original_name}` });
  box.checked = selected.has(image.image_id);
  box.addEventListener("change", () => {
    if (box.checked) selected.add(image.image_id);
    else selected.delete(image.image_id);
    showSelection();
  });
  const img = el("img", {
    alt: image.original_name,
    loading: "lazy",
    decoding: "async",
    ...sizedSources(image.url, TILE_WIDTHS),
    sizes: "120px",
  });
  return el(
    "li",
    { class: "tile", "data-image-id": image.image_id, title: `${image.original_name}: ${plural(image.faces, "face")}` },
    el("a", { href: image.url, target: "_blank", rel: "noopener", class: "tile-photo" }, img),
    el("label", { class: "tile-pick" }, box, el("span", { class: "visually-hidden" }, "Select")),
  );
}

async function loadPage(reset) {
  if (reset) {
    generation += 1;
    cursor = null;
    selected.clear();
  }
  const mine = generation;
  const status = $("photos-status");
  const query = new URLSearchParams({ limit: String(PHOTOS_PAGE) });
  if (cursor !== null) query.set("after", String(cursor));
  let page;
  try {
    page = await api("GET", `/api/face/sessions/${encodeURIComponent(sessionId)}/images?${query}`);
  } catch (error) {
    if (mine === generation) status.textContent = describeError(error);
    return;
  }
  if (mine !== generation) return;
  const tiles = page.images.map(tile);
  if (reset) $("photo-grid").replaceChildren(...tiles);
  else $("photo-grid").append(...tiles);
  cursor = page.next_after;
  $("photos-more").hidden = cursor === null;
  status.textContent = $("photo-grid").children.length ? "" : "No photos yet: drop some above.";
  showSelection();
}

async function deleteAll(ids) {
  const failed = [];
  const queue = [...ids];
  async function worker() {
    while (queue.length) {
      const id = queue.shift();
      try {
        await api("DELETE", `/api/face/image/${encodeURIComponent(id)}`);
      } catch (error) {
        if (error.status !== 404) failed.push(error); // gone already is what was asked
      }
    }
  }
  await Promise.all(Array.from({ length: PARALLEL_DELETES }, worker));
  if (failed.length) throw failed[0];
}

async function deleteSelected() {
  const ids = [...selected];
  let attempted = false;
  const done = await confirmAction({
    title: `Delete ${plural(ids.length, "photo")}?`,
    body: [
      el("p", {}, "The photos, their faces and their resized copies are deleted for good."),
      el("p", {}, "Guests will no longer find them."),
    ],
    action: "Delete",
    run: () => {
      attempted = true;
      return deleteAll(ids);
    },
  });
  if (!done && !attempted) return;
  await loadPage(true); // after a refusal too: some may have gone before it
  onChange();
}
