// The page's entry: the access key (from the link's #fragment or the key field), then one of two views.
//   /#session=7&key=...  a guest of event 7 searches it with a selfie
//   /#manage=7, /        an organiser creates events, uploads photos, copies guest links

import { currentKey, setKey, UNAUTHORIZED_EVENT } from "./api.js";
import { initGuest, showGuest } from "./guest.js";
import { initOrganiser, showOrganiser } from "./organiser.js";
import { $, showNotice } from "./ui.js";

function fragment() {
  return new URLSearchParams(location.hash.slice(1));
}

// A key in the link moves to sessionStorage and out of the address bar, so it is not copied along with
// the address or caught in a screenshot. Fragments never reach the server.
function takeKeyFromLink() {
  const params = fragment();
  if (!params.has("key")) return;
  setKey(params.get("key"));
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", rest ? `#${rest}` : location.pathname + location.search);
}

function showKeyState() {
  const key = currentKey();
  $("key-summary").textContent = key ? "Key in use" : "Access key";
  $("key-input").value = "";
}

function route() {
  showNotice("");
  const params = fragment();
  const session = params.get("session");
  if (session) showGuest(session);
  else showOrganiser(params.get("manage"));
}

function initKeyPanel() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("key-input").value.trim());
    showKeyState();
    $("key-panel").open = false;
    route();
  });
  $("key-forget").addEventListener("click", () => {
    setKey("");
    showKeyState();
  });
  window.addEventListener(UNAUTHORIZED_EVENT, () => {
    showNotice(
      currentKey()
        ? "The access key was refused (unknown, revoked or expired). Paste another under “Access key”."
        : "This needs an access key. Paste the one you were given under “Access key”.",
    );
    $("key-panel").open = true;
  });
}

takeKeyFromLink();
initKeyPanel();
initGuest();
initOrganiser();
showKeyState();
window.addEventListener("hashchange", () => {
  takeKeyFromLink();
  showKeyState();
  route();
});
route();
