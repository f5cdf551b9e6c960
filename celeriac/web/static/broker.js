// The broker page: queue lengths asked again every few seconds.
"use strict";

(() => {
  async function refresh() {
    try {
      const r = await fetch(C.url("/api/queues/length"), { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      for (const q of data.active_queues || []) {
        for (const el of document.querySelectorAll(`[data-queue="${CSS.escape(q.name)}"]`)) {
          el.textContent = q.messages;
        }
      }
    } catch (err) {
      // the next round tries again
    }
  }

  setInterval(() => {
    if (!document.hidden) refresh();
  }, 3000);
})();
