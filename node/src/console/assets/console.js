// The console's one script: the cluster table refreshed in place, and the pull command
// copied. Pages work without it; nothing else runs in the browser.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-refresh]");
  if (live) {
    const refresh = async () => {
      try {
        const r = await fetch(live.dataset.refresh, { credentials: "same-origin" });
        if (r.ok) {
          live.innerHTML = await r.text();
          live.dataset.refreshed = String(Date.now());
        }
      } catch (_) {
        // A region restarting: the next round tries again.
      }
    };
    setInterval(refresh, 2000);
  }
  for (const b of document.querySelectorAll("button[data-copy]")) {
    b.addEventListener("click", async () => {
      await navigator.clipboard.writeText(b.dataset.copy);
      b.textContent = "Copied";
    });
  }
});
