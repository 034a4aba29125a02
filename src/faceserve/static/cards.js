// A photo as a card: a lazily loaded ?w= thumbnail that opens the photo, then Open | Download (and, where a
// view passes them, more actions). Search matches and a person's photos show the same cards.

import { derivativeSizes, pickWidth, withWidth } from "./api.js";
import { el } from "./ui.js";

// thumbnails fill half a phone's width or a 240 px column: 320 px files for plain screens, 640 for dense
const THUMB_WIDTHS = [320, 640];

function fileName(identity) {
  return identity.split("/").pop();
}

// photo: {identity, image_id, url} (a search match or a person's photo); label: the thumbnail's alt text
export function photoCard(photo, label, ...extraActions) {
  const sizes = derivativeSizes();
  const widths = [...new Set(THUMB_WIDTHS.map((w) => pickWidth(sizes, w)))];
  const img = el("img", {
    alt: label,
    loading: "lazy",
    decoding: "async",
    src: sizes.length ? withWidth(photo.url, widths[0]) : photo.url,
    srcset: sizes.length ? widths.map((w) => `${withWidth(photo.url, w)} ${w}w`).join(", ") : null,
    sizes: "(max-width: 600px) 50vw, 240px",
  });
  return el(
    "li",
    { class: "match", "data-image-id": photo.image_id },
    el("a", { class: "photo", href: photo.url, target: "_blank", rel: "noopener" }, img),
    el(
      "div",
      { class: "actions" },
      el("a", { href: photo.url, target: "_blank", rel: "noopener" }, "Open"),
      el("a", { href: photo.url, download: fileName(photo.identity) }, "Download"),
      ...extraActions,
    ),
  );
}
