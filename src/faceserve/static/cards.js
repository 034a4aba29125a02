// A photo as a card: a lazily loaded ?w= thumbnail that opens the photo on the page (viewer.js), then Open | Download (and, where a
// view passes them, more actions). Search matches and a person's photos show the same cards.

import { derivativeSizes, pickWidth, withWidth } from "./api.js";
import { el } from "./ui.js";
import { openPhoto } from "./viewer.js";

// thumbnails fill half a phone's width or a 240 px column: 320 px files for plain screens, 640 for dense
const THUMB_WIDTHS = [320, 640];

function fileName(identity) {
  return identity.split("/").pop();
}

// src and srcset of an image shown at about these widths: the service's nearest ?w= sizes, or the file
// itself where the service makes none
export function sizedSources(url, displayWidths) {
  const sizes = derivativeSizes();
  if (!sizes.length) return { src: url, srcset: null };
  const widths = [...new Set(displayWidths.map((w) => pickWidth(sizes, w)))];
  return { src: withWidth(url, widths[0]), srcset: widths.map((w) => `${withWidth(url, w)} ${w}w`).join(", ") };
}

// photo: {identity, image_id, url} (a search match or a person's photo); label: the thumbnail's alt text
export function photoCard(photo, label, ...extraActions) {
  const img = el("img", {
    alt: label,
    loading: "lazy",
    decoding: "async",
    ...sizedSources(photo.url, THUMB_WIDTHS),
    sizes: "(max-width: 600px) 50vw, 240px",
  });
  const thumbnail = el("a", { class: "photo", href: photo.url, target: "_blank", rel: "noopener" }, img);
  // opened on the page, with the face that matched outlined (a new tab still opens the bare file)
  thumbnail.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    openPhoto(photo, label, fileName(photo.identity));
  });
  return el(
    "li",
    { class: "match", "data-image-id": photo.image_id },
    thumbnail,
    el(
      "div",
      { class: "actions" },
      el("a", { href: photo.url, target: "_blank", rel: "noopener" }, "Open"),
      el("a", { href: photo.url, download: fileName(photo.identity) }, "Download"),
      ...extraActions,
    ),
  );
}
