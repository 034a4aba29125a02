// The people of an event: a grid of round face covers, most photographed first (the API's order), paged by
// its keyset cursor ("More people"); a person opens to their photos, the same cards as search results.
// An organiser's copy also merges two people into one and takes a wrongly grouped face out of a person.
// Guests get it with a key that may list people (the search scope); a key that may not hides it.

import { api } from "./api.js";
import { photoCard, sizedSources } from "./cards.js";
import { confirmAction } from "./dialog.js";
import { describeError, el, plural } from "./ui.js";

const PEOPLE_PAGE = 24; // 8 rows of 3 on a phone, 3 rows on a desktop
const PHOTOS_PAGE = 24;
// covers are 72-120 px circles: these widths serve them at 1x and 2x
const COVER_WIDTHS = [128, 240];

// a face crop (a person's cover, the face a take-out moves) as a circle; url null: a blank circle
function coverImage(url, className, alt = "") {
  if (!url) return el("span", { class: `${className} cover-missing`, "aria-hidden": "true" });
  return el("img", {
    class: className,
    alt,
    loading: "lazy",
    decoding: "async",
    ...sizedSources(url, COVER_WIDTHS),
    sizes: "120px",
  });
}

// root: an empty <section>; editable: the organiser's copy (merge and split)
export function peopleView(root, { editable, heading }) {
  let sessionId = null;
  let cursor = null; // the next people page's `after`
  let shown = []; // people on the grid, in order
  let selected = []; // person ids picked for a merge, in the order picked
  let person = null; // the person open, or null on the grid
  let photosCursor = null;
  let generation = 0; // answers of an event or person left meanwhile are dropped

  const grid = el("ul", { class: "people-grid" });
  const status = el("p", { class: "people-status", role: "status", "aria-live": "polite" });
  const more = el("button", { type: "button", class: "secondary more", hidden: true }, "More people");
  const mergeCount = el("span", { class: "merge-count", role: "status" });
  const mergeButton = el("button", { type: "button", class: "merge", disabled: true }, "Merge");
  const clearButton = el("button", { type: "button", class: "secondary" }, "Clear");
  const mergeBar = el(
    "div",
    { class: "merge-bar", hidden: true },
    mergeCount,
    el("div", { class: "row" }, clearButton, mergeButton),
  );
  const gridView = el(
    "div",
    { class: "people-grid-view" },
    el("h2", {}, heading),
    el(
      "p",
      { class: "hint" },
      editable
        ? "Open someone to see their photos and take out a face that is not theirs. " +
          "Select two people who are one person to merge them."
        : "Pick someone to see their photos.",
    ),
    grid,
    status,
    more,
    ...(editable ? [mergeBar] : []),
  );

  const back = el(
    "button",
    { type: "button", class: "secondary back" },
    el("span", { "aria-hidden": "true" }, "←"),
    " All people",
  );
  const personCover = el("div", { class: "person-cover" });
  const personTitle = el("h2", { class: "person-title", tabindex: "-1" });
  const personCounts = el("p", { class: "muted person-counts" });
  const photos = el("ul", { class: "gallery person-photos" });
  const photosStatus = el("p", { class: "people-status", role: "status", "aria-live": "polite" });
  const morePhotos = el("button", { type: "button", class: "secondary more", hidden: true }, "More photos");
  const personView = el(
    "div",
    { class: "person-view", hidden: true },
    back,
    el("div", { class: "person-head" }, personCover, el("div", {}, personTitle, personCounts)),
    photosStatus,
    photos,
    morePhotos,
  );
  root.classList.add("people");
  root.replaceChildren(gridView, personView);

  const base = () => `/api/face/sessions/${encodeURIComponent(sessionId)}/people`;

  // --- the grid ---

  function personItem(entry, rank) {
    const open = el(
      "button",
      {
        type: "button",
        class: "person-open",
        "aria-label": `Person ${rank}: ${plural(entry.image_count, "photo")}`,
      },
      coverImage(entry.cover_url, "cover"),
      el("span", { class: "count" }, plural(entry.image_count, "photo")),
    );
    open.addEventListener("click", () => openPerson(entry, true));
    const item = el("li", { class: "person", "data-person-id": entry.person_id }, open);
    if (editable) {
      const box = el("input", { type: "checkbox", "aria-label": `Select person ${rank} to merge` });
      box.addEventListener("change", () => toggle(entry.person_id, box.checked));
      item.append(el("label", { class: "pick" }, box, el("span", { "aria-hidden": "true" }, "Select")));
    }
    return item;
  }

  async function loadPeople(reset) {
    if (reset) generation += 1; // a page still on its way belongs to the grid this one replaces
    const mine = generation;
    if (reset) {
      cursor = null;
      shown = [];
      selected = [];
    }
    more.disabled = true;
    const query = new URLSearchParams({ limit: String(PEOPLE_PAGE) });
    if (cursor) query.set("after", cursor);
    let page;
    try {
      page = await api("GET", `${base()}?${query}`);
    } catch (error) {
      if (mine !== generation) return;
      if (!editable) {
        root.hidden = true; // a key that may not list people (401/403), or no such event: no section
        return;
      }
      status.textContent = describeError(error);
      more.disabled = false;
      return;
    }
    if (mine !== generation) return;
    const items = page.people.map((entry, at) => personItem(entry, shown.length + at + 1));
    if (reset) grid.replaceChildren(...items);
    else grid.append(...items);
    shown.push(...page.people);
    cursor = page.next_after;
    more.hidden = !cursor;
    more.disabled = false;
    // guests see the section only when there is someone to see
    root.hidden = !editable && shown.length === 0;
    status.textContent = shown.length
      ? ""
      : "Nobody yet: a person shows here once their face is in more than one photo.";
    showSelection();
  }

  function toggle(personId, on) {
    selected = selected.filter((id) => id !== personId);
    if (on) selected.push(personId);
    showSelection();
  }

  function showSelection() {
    if (!editable) return;
    mergeBar.hidden = selected.length === 0;
    mergeCount.textContent =
      selected.length === 2 ? "2 people selected" : "1 person selected: select one more to merge";
    mergeButton.disabled = selected.length !== 2;
    for (const item of grid.children) {
      const id = Number(item.dataset.personId);
      const box = item.querySelector("input[type=checkbox]");
      const on = selected.includes(id);
      item.classList.toggle("selected", on);
      box.checked = on;
      box.disabled = !on && selected.length >= 2; // two at a time: a merge joins a pair
    }
  }

  async function merge() {
    // the one listed first (more photos) keeps its id; the other's faces join it
    const pair = shown.filter((entry) => selected.includes(entry.person_id));
    if (pair.length !== 2) return;
    const [keep, other] = pair;
    let merged = null;
    let refused = false;
    const done = await confirmAction({
      title: "Merge these two people?",
      body: [
        el(
          "div",
          { class: "pair" },
          coverImage(keep.cover_url, "cover"),
          el("span", { "aria-hidden": "true" }, "+"),
          coverImage(other.cover_url, "cover"),
        ),
        el(
          "p",
          {},
          "All their photos become one person's. Merge only when both are the same person: " +
            "later regrouping keeps them together.",
        ),
      ],
      action: "Merge",
      run: async () => {
        try {
          merged = await api("POST", `${base()}/${keep.person_id}/merge`, { other: other.person_id });
        } catch (error) {
          refused = true;
          throw error;
        }
      },
    });
    if (!done) {
      if (refused) await loadPeople(true); // the grid was out of date (another organiser): show it as it is
      return;
    }
    await loadPeople(true);
    status.textContent = `Merged: one person in ${plural(merged.person.image_count, "photo")}.`;
    // the merge bar is gone with the selection: focus the person both became, as coming back does
    focusPerson(merged.person.person_id);
  }

  mergeButton.addEventListener("click", merge);
  clearButton.addEventListener("click", () => {
    selected = [];
    showSelection();
  });
  more.addEventListener("click", () => loadPeople(false));

  // --- one person ---

  function photoItem(photo, at) {
    const card = photoCard(photo, `Photo ${at + 1} of this person`);
    card.dataset.faceId = photo.face_id;
    if (editable && person.face_count > 1) {
      const takeOut = el("button", { type: "button", class: "link-button" }, "Not this person");
      takeOut.addEventListener("click", () => split(photo));
      card.querySelector(".actions").append(takeOut);
    }
    return card;
  }

  async function loadPhotos(reset) {
    const mine = generation;
    if (reset) {
      photosCursor = null;
      photos.replaceChildren();
    }
    morePhotos.disabled = true;
    const query = new URLSearchParams({ limit: String(PHOTOS_PAGE) });
    if (photosCursor) query.set("after", String(photosCursor));
    let page;
    try {
      page = await api("GET", `${base()}/${person.person_id}/images?${query}`);
    } catch (error) {
      if (mine !== generation) return;
      photosStatus.textContent =
        error.code === "person_not_found"
          ? "This person is gone (merged or regrouped): go back to all people."
          : describeError(error);
      morePhotos.hidden = true;
      return;
    }
    if (mine !== generation) return;
    person = page.person;
    showPersonHead();
    const start = photos.children.length;
    photos.append(...page.images.map((photo, at) => photoItem(photo, start + at)));
    photosCursor = page.next_after;
    morePhotos.hidden = photosCursor === null;
    morePhotos.disabled = false;
  }

  function showPersonHead() {
    personCover.replaceChildren(coverImage(person.cover_url, "cover big"));
    personTitle.textContent = `In ${plural(person.image_count, "photo")}`;
    personCounts.textContent = editable ? plural(person.face_count, "face") : "";
  }

  async function openPerson(entry, remember) {
    generation += 1;
    person = entry;
    photosStatus.textContent = "";
    gridView.hidden = true;
    personView.hidden = false;
    showPersonHead();
    // the phone's back button comes back to the grid: one history entry, the address unchanged
    if (remember) history.pushState({ faceservePerson: entry.person_id }, "");
    personTitle.focus({ preventScroll: true });
    await loadPhotos(true);
    root.scrollIntoView({ block: "start" }); // the grid was long, the person starts at the top
  }

  async function split(photo) {
    const before = person;
    let result = null;
    let refused = false;
    const done = await confirmAction({
      title: "Take this face out?",
      body: [
        coverImage(photo.face_url, "cover face-out", "The face to take out"),
        el(
          "p",
          {},
          "This face is not this person: it becomes a person of its own. The photo stays in the event, " +
            "and later regrouping keeps the face apart.",
        ),
      ],
      action: "Take out",
      run: async () => {
        try {
          result = await api("POST", `${base()}/${before.person_id}/split`, { face_ids: [photo.face_id] });
        } catch (error) {
          refused = true;
          throw error;
        }
      },
    });
    // another person opened meanwhile (a "More photos" page replaces `person`, the same one)
    if (!person || person.person_id !== before.person_id) return;
    if (!done) {
      if (refused) await loadPhotos(true);
      return;
    }
    person = result.person;
    await loadPhotos(true);
    photosStatus.textContent = "Taken out: that face is now a person of its own.";
    personTitle.focus({ preventScroll: true }); // its card and button are gone: back to the top of the person
  }

  function showGrid() {
    generation += 1;
    const was = person;
    person = null;
    personView.hidden = true;
    gridView.hidden = false;
    loadPeople(true).then(() => {
      if (was) focusPerson(was.person_id);
    });
  }

  // the open button of a person on the grid, where they are listed
  function focusPerson(personId) {
    const open = grid.querySelector(`[data-person-id="${personId}"] .person-open`);
    if (open) open.focus();
  }

  back.addEventListener("click", () => {
    if (history.state && history.state.faceservePerson) history.back(); // popstate shows the grid
    else showGrid();
  });
  window.addEventListener("popstate", () => {
    if (person && !root.hidden && !(history.state && history.state.faceservePerson)) showGrid();
  });
  morePhotos.addEventListener("click", () => loadPhotos(false));

  return {
    // the grid of an event, from its first page
    async show(id) {
      generation += 1;
      sessionId = id;
      person = null;
      personView.hidden = true;
      gridView.hidden = false;
      grid.replaceChildren();
      status.textContent = "";
      more.hidden = true;
      root.hidden = !editable; // a guest's section appears once people are listed
      await loadPeople(true);
    },
    // the grid again, unless someone is being looked at or picked (after uploads: new people may be there)
    async refresh() {
      if (sessionId !== null && !person && !selected.length) await loadPeople(true);
    },
  };
}
