// One confirmation dialog for the organiser's corrections: a native <dialog> (focus kept inside, Esc
// cancels), the action runs from its button, and a refusal shows the service's own message in it.

import { $, describeError } from "./ui.js";

let running = null; // the action of the open dialog

export function initDialog() {
  const dialog = $("confirm");
  $("confirm-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!running) return;
    const button = $("confirm-ok");
    button.disabled = true;
    $("confirm-error").textContent = "";
    try {
      await running();
      running = null;
      dialog.close("done");
    } catch (error) {
      $("confirm-error").textContent = describeError(error);
    } finally {
      button.disabled = false;
    }
  });
  $("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
  dialog.addEventListener("close", () => {
    running = null;
  });
}

// Resolves true once `run` succeeded, false when the person cancelled (Cancel, Esc).
export function confirmAction({ title, body, action, run }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").replaceChildren(...body);
  $("confirm-error").textContent = "";
  $("confirm-ok").textContent = action;
  running = run;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "done"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus(); // the safe choice first: Enter on a stray focus cancels
  });
}
