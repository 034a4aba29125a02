// One confirmation dialog for the organiser's corrections: a native <dialog> (focus kept inside, Esc
// cancels), the action runs from its button, and a refusal shows the service's own message in it.
// While the action is on its way the dialog stays open (Esc and Cancel do nothing): the service applies it
// whether or not anyone waits, so its outcome is always shown.

import { $, describeError } from "./ui.js";

let running = null; // the action of the open dialog
let busy = false; // that action was sent and has not answered yet
let succeeded = false; // the action of the open dialog ran to its end
let settle = null; // resolves the open dialog's promise

function setBusy(on) {
  busy = on;
  $("confirm-ok").disabled = on;
  $("confirm-cancel").disabled = on;
}

export function initDialog() {
  const dialog = $("confirm");
  $("confirm-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!running || busy) return;
    setBusy(true);
    $("confirm-error").textContent = "";
    let failure = null;
    try {
      await running();
      succeeded = true;
    } catch (error) {
      failure = error;
    }
    setBusy(false);
    if (failure) $("confirm-error").textContent = describeError(failure);
    else if (dialog.open) dialog.close("done");
    // else it closed while busy and its `close` event, still to come, settles it as done
  });
  $("confirm-cancel").addEventListener("click", () => {
    if (!busy) dialog.close("cancel");
  });
  dialog.addEventListener("cancel", (event) => {
    if (busy) event.preventDefault();
  });
  dialog.addEventListener("close", () => {
    if (busy) {
      // Chromium lets a repeated Esc close a dialog even when its `cancel` is prevented: open it again
      dialog.showModal();
      return;
    }
    running = null;
    const resolve = settle;
    settle = null;
    if (resolve) resolve(succeeded);
  });
}

// Resolves true once `run` succeeded, false when the person cancelled (Cancel, Esc) before it did.
export function confirmAction({ title, body, action, run }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").replaceChildren(...body);
  $("confirm-error").textContent = "";
  $("confirm-ok").textContent = action;
  running = run;
  succeeded = false;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    settle = resolve;
    dialog.showModal();
    $("confirm-cancel").focus(); // the safe choice first: Enter on a stray focus cancels
  });
}
