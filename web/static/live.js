// Refreshes the overview's live parts (figures, slots, charts) from live.json. The server
// renders each part; this swaps the new markup in, so the page and the refresh never differ.
(function () {
  "use strict";
  const root = document.querySelector("[data-live-url]");
  if (!root) return;
  const url = root.dataset.liveUrl;
  const interval = Number(root.dataset.liveInterval) || 2000;
  const status = root.querySelector("[data-live-status]");
  const idleText = status ? status.textContent : "";

  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) {
        window.location.reload(); // the session ended: the server sends the sign-in page
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      for (const [name, markup] of Object.entries(data.fragments)) {
        const target = root.querySelector('[data-live-fragment="' + name + '"]');
        if (target) target.innerHTML = markup;
      }
      root.dataset.liveUpdated = String(Date.now());
      if (status) status.textContent = idleText;
    } catch (error) {
      if (status) status.textContent = "Connection lost, retrying…";
    }
  }

  window.setInterval(refresh, interval);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
})();
