// A photo opened on the page with the face that matched outlined: the photo as stored (the match's `box` is
// in its pixels, so the outline is placed in fractions of its natural size), Open and Download beside it.

import { $ } from "./ui.js";

export function initViewer() {
  const dialog = $("viewer");
  $("viewer-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a tap on the backdrop
  });
  dialog.addEventListener("close", () => $("viewer-image").removeAttribute("src"));
}

function placeBox(image, box) {
  const outline = $("viewer-box");
  const [x1, y1, x2, y2] = box;
  const width = image.naturalWidth;
  const height = image.naturalHeight;
  if (!width || !height) return;
  const percent = (value, whole) => `${((100 * Math.min(Math.max(value, 0), whole)) / whole).toFixed(3)}%`;
  outline.style.left = percent(x1, width);
  outline.style.top = percent(y1, height);
  outline.style.width = percent(x2 - x1, width);
  outline.style.height = percent(y2 - y1, height);
  outline.hidden = false;
}

// photo: {url, box?}; label: the image's alt text; fileName: what Download saves it as
export function openPhoto(photo, label, fileName) {
  const dialog = $("viewer");
  const image = $("viewer-image");
  $("viewer-box").hidden = true;
  image.alt = label;
  image.onload = () => {
    if (photo.box) placeBox(image, photo.box);
  };
  image.src = photo.url;
  $("viewer-open").href = photo.url;
  $("viewer-download").href = photo.url;
  $("viewer-download").download = fileName;
  $("viewer-caption").textContent = photo.box ? "The face that matched is outlined." : "";
  dialog.showModal();
}
