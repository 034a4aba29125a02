// The page's entry: the access key (from the link's #fragment or the key field), then one of two views.
//   /#session=7&key=...  a guest of event 7 searches it with a selfie
//   /#manage=7, /        an organiser creates events, uploads photos, copies guest links
//   /#setup=...          a one-time setup link: trades its token for an admin key this browser keeps

import { api, currentKey, setKey, UNAUTHORIZED_EVENT } from "./api.js";
import { initDialog } from "./dialog.js";
import { initGuest, showGuest } from "./guest.js";
import { initOrganiser, showOrganiser } from "./organiser.js";
import { $, describeError, showNotice } from "./ui.js";
import { initViewer } from "./viewer.js";

function fragment() {
  return new URLSearchParams(location.hash.slice(1));
}

// A key in the link goes to sessionStorage (fragments never reach the server). A guest link stays whole in
// the address bar, so it can be bookmarked for the photos added later; its key only searches that event.
// Any other key (an organiser's) leaves the address bar: not copied along with it, not in a screenshot.
function takeKeyFromLink() {
  const params = fragment();
  if (!params.has("key")) return;
  setKey(params.get("key"));
  if (params.has("session")) return;
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", rest ? `#${rest}` : location.pathname + location.search);
}

// The token dies on use, so it leaves the address bar first (a reload must not spend it twice)
async function takeSetupToken() {
  const params = fragment();
  if (!params.has("setup")) return;
  const token = params.get("setup");
  params.delete("setup");
  const rest = params.toString();
  history.replaceState(null, "", rest ? `#${rest}` : location.pathname + location.search);
  try {
    const created = await api("POST", "/api/face/setup", { token });
    setKey(created.key, { remember: true });
    showNotice("");
    $("signed-in").hidden = false;
  } catch (error) {
    showNotice(`This setup link did not sign you in: ${describeError(error)}`);
    return false;
  }
  return true;
}

function showKeyState() {
  const key = currentKey();
  $("key-summary").textContent = key ? "Key in use" : "Access key";
  $("key-input").value = "";
}

function route() {
  showNotice("");
  $("signed-in").hidden = true;
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
        : describeError({ code: "unauthorized" }),
    );
    $("key-panel").open = true;
  });
}

async function start() {
  takeKeyFromLink();
  initKeyPanel();
  initDialog();
  initViewer();
  initGuest();
  initOrganiser();
  const signedIn = await takeSetupToken();
  showKeyState();
  window.addEventListener("hashchange", async () => {
    takeKeyFromLink();
    const fresh = await takeSetupToken();
    showKeyState();
    if (fresh !== false) route();
  });
  if (signedIn === false) return; // the refusal stays on screen
  route();
  if (signedIn) $("signed-in").hidden = false;
}

start();
