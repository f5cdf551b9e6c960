// Live bits of the server-rendered pages: worker status cells, and a task page that redraws
// itself when its task changes.
"use strict";

(() => {
  function cells(attr, name) {
    return document.querySelectorAll(`[${attr}="${CSS.escape(name)}"]`);
  }

  function load(w) {
    return Array.isArray(w.loadavg) ? w.loadavg.map((x) => Number(x).toFixed(2)).join(" ") : "—";
  }

  let pending = null;

  function redrawTask(message) {
    const shown = document.querySelector("[data-task]");
    if (!shown || pending) return;
    const id = shown.dataset.task;
    // Only news redraws: the stream may repeat what the page already shows.
    const mine = message.tasks.some((t) => t.uuid === id && (
      t.state !== shown.dataset.state || String(t.timestamp) !== shown.dataset.ts));
    if (mine || (message.more && shown.dataset.final !== "1")) {
      // Let a burst of events settle into one redraw.
      pending = setTimeout(() => {
        pending = null;
        C.reloadMain();
      }, 300);
    }
  }

  C.onStream((m) => {
    for (const [name, w] of Object.entries(m.workers || {})) {
      for (const el of cells("data-worker-status", name)) el.innerHTML = C.statusBadge(w.online);
      for (const el of cells("data-worker-active", name)) el.textContent = w.active ?? "—";
      for (const el of cells("data-worker-processed", name)) el.textContent = w.processed ?? "—";
      for (const el of cells("data-worker-load", name)) el.textContent = load(w);
    }
    if (!m.hello) redrawTask(m);
  });
})();
