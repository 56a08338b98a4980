// "Copy" buttons next to a read-only value (a new API key): copy it, or select it where the
// clipboard is not available, and say which happened.
(function () {
  "use strict";
  document.addEventListener("click", async function (event) {
    const button = event.target.closest("[data-copy-target]");
    if (!button) return;
    const field = document.getElementById(button.dataset.copyTarget);
    const status = button.parentElement.querySelector("[data-copy-status]");
    if (!field) return;
    field.focus();
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      if (status) status.textContent = "Copied.";
    } catch (error) {
      if (status) status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
})();
