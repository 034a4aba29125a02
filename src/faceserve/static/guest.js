// The guest's view (#session=ID): a selfie in, every photo of this event with that face out.

import { api } from "./api.js";
import { photoCard } from "./cards.js";
import { hideLive, initLive, offerLive } from "./live.js";
import { peopleView } from "./people.js";
import { $, describeError, el, plural, showNotice } from "./ui.js";

// Selfies from phone cameras are 3-12 MB; the detector looks at 640 px. Sending at most this many pixels
// on a side keeps a search on mobile data to a second or two and changes nothing it finds.
const SELFIE_MAX_SIDE = 1600;
const SELFIE_KEEP_BYTES = 1_500_000; // smaller than this and no wider: sent as it is
// what the guest can change when the service cannot use the selfie (422 codes of the search)
const SELFIE_ADVICE = {
  no_face_found: "No face found in that photo. Try one where your face is clear and fills more of the picture.",
  face_too_small: "Move closer: your face is too small in that photo to find you.",
  face_blurred: "Hold the phone still: that photo is too blurred to find you.",
  face_turned: "Look at the camera: your face is turned too far to find you.",
};

// a selfie with several faces offers each (largest first) as a choice, and "all of us" (the service takes 4)
const MAX_FACE_CHOICES = 4;

let sessionId = null;
let previewUrl = null;
let probe = null; // the selfie as sent, searched again when the guest picks another face or all of them
let people = null; // a guest without a selfie at hand finds themselves among the people of the event

export function initGuest() {
  people = peopleView($("guest-people"), {
    editable: false,
    heading: "Or find yourself among the people here",
  });
  initLive();
  $("selfie").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // the same photo picked again must search again
    if (file) await searchWith(file);
  });
}

export async function showGuest(id) {
  sessionId = id;
  await hideLive();
  $("organiser").hidden = true;
  $("guest").hidden = false;
  $("guest-title").textContent = "Find your photos";
  $("matches").replaceChildren();
  $("search-status").textContent = "";
  $("selfie-button").hidden = false;
  const listing = people.show(id);
  try {
    const session = await api("GET", `/api/face/sessions/${encodeURIComponent(id)}`);
    $("guest-title").textContent = `Find your photos of ${session.name}`;
    document.title = `${session.name}: find your photos`;
  } catch (error) {
    // a guest key may search without reading the session: only a missing event is worth saying
    if (error.status === 404) {
      showNotice("This event does not exist (any more). Check the link you were given.");
      $("selfie-button").hidden = true;
    }
  }
  await listing;
}

async function shrink(file) {
  try {
    const bitmap = await createImageBitmap(file); // applies the camera's EXIF orientation
    const scale = Math.min(1, SELFIE_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && file.size <= SELFIE_KEEP_BYTES) {
      bitmap.close();
      return file;
    }
    const canvas = el("canvas", {
      width: Math.round(bitmap.width * scale),
      height: Math.round(bitmap.height * scale),
    });
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
    return blob || file;
  } catch {
    return file; // a format this browser cannot decode: the service may still read it
  }
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("probe-preview").src = previewUrl;
  $("probe-preview").hidden = false;
}

async function searchWith(file) {
  showNotice("");
  showPreview(file);
  $("probe-faces").replaceChildren();
  $("probe-faces").hidden = true;
  probe = await shrink(file);
  await search({});
}

// choice: {} for the largest face, {face: index} for another, {match: "all"} for the photos with all of them
async function search(choice) {
  const status = $("search-status");
  const button = $("selfie-button");
  status.textContent = "Looking for you in every photo…";
  $("matches").replaceChildren();
  await hideLive(); // live results follow one face: the one searched last
  button.classList.add("busy");
  try {
    const form = new FormData();
    form.append("session_id", sessionId);
    form.append("image", probe, "selfie.jpg");
    if (choice.face !== undefined) form.append("face", String(choice.face));
    if (choice.match) form.append("match", choice.match);
    const data = await api("POST", "/api/face/search", form);
    const count = data.matches.length;
    if (choice.match) {
      status.textContent =
        count === 0 ? "No photos with all of you together yet." : `You are together in ${plural(count, "photo")}.`;
    } else {
      status.textContent =
        count === 0
          ? "No photos of you here yet. Try another selfie: face the camera, in good light."
          : `You are in ${plural(count, "photo")}. Open one to see it in full.`;
    }
    renderMatches(data.matches);
    // live results for the face searched (largest or picked), from the search's sealed live_token: the
    // selfie is not sent again (match=all answers none)
    if (data.live_token) offerLive(sessionId, data.live_token);
    await renderFaceChoices(data, choice);
  } catch (error) {
    status.textContent = SELFIE_ADVICE[error.code] || describeError(error);
  } finally {
    button.classList.remove("busy");
  }
}

// Several faces in the selfie: each as a button showing that face, and one for the photos with all of them.
async function renderFaceChoices(data, choice) {
  const choices = $("probe-faces");
  if (data.probe_faces.length < 2) {
    choices.replaceChildren();
    choices.hidden = true;
    return;
  }
  const bitmap = await createImageBitmap(probe).catch(() => null);
  const faces = data.probe_faces.slice(0, MAX_FACE_CHOICES).map((face) => {
    const button = el(
      "button",
      { type: "button", class: "face-choice", "aria-pressed": String(!choice.match && data.used[0] === face.index) },
      faceThumbnail(bitmap, face.box),
      `Face ${face.index + 1}`,
    );
    button.addEventListener("click", () => search({ face: face.index }));
    return button;
  });
  if (bitmap) bitmap.close();
  const together = el(
    "button",
    { type: "button", class: "face-choice", "aria-pressed": String(Boolean(choice.match)) },
    "Photos with all of us",
  );
  together.addEventListener("click", () => search({ match: "all" }));
  choices.replaceChildren(el("p", {}, "Several faces here: tap yours, or see the photos with all of you."), ...faces, together);
  choices.hidden = false;
}

function faceThumbnail(bitmap, [x1, y1, x2, y2]) {
  const canvas = el("canvas", { width: 80, height: 80, "aria-hidden": "true" });
  if (bitmap) canvas.getContext("2d").drawImage(bitmap, x1, y1, x2 - x1, y2 - y1, 0, 0, 80, 80);
  return canvas;
}

function renderMatches(matches) {
  $("matches").replaceChildren(
    ...matches.map((match, index) => photoCard(match, `Photo ${index + 1} of ${matches.length}`)),
  );
}
