// The dashboard: cards, tasks by state, the worker table and a live throughput chart, all
// redrawn from the stream (the page carries the first snapshot inline).
"use strict";

(() => {
  const WINDOW_MAX = 15 * 60; // seconds of chart at most
  const WINDOW_MIN = 60;
  const view = JSON.parse(document.getElementById("initial").textContent);
  let samples = view.samples || [];

  function set(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  // [[ts, events, succeeded, failed], ...] -> [{t, events, ok, fail}] rates per second
  function rates() {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const [t0, e0, s0, f0] = samples[i - 1];
      const [t1, e1, s1, f1] = samples[i];
      const dt = t1 - t0;
      if (dt <= 0) continue;
      out.push({
        t: t1,
        events: Math.max(0, e1 - e0) / dt,
        ok: Math.max(0, s1 - s0) / dt,
        fail: Math.max(0, f1 - f0) / dt,
        okN: Math.max(0, s1 - s0),
        failN: Math.max(0, f1 - f0),
      });
    }
    return out;
  }

  function drawChart(points) {
    const svg = document.getElementById("chart");
    if (!svg) return;
    const W = 600;
    const H = 160;
    const now = points.length ? points[points.length - 1].t : Date.now() / 1000;
    const first = points.length ? points[0].t : now;
    const span = Math.min(WINDOW_MAX, Math.max(WINDOW_MIN, now - first));
    const start = now - span;
    const shown = points.filter((p) => p.t >= start);
    const top = Math.max(1, ...shown.map((p) => p.ok + p.fail));
    const x = (t) => ((t - start) / span) * W;
    const y = (v) => H - (v / top) * (H - 14);
    const line = (f) => shown.map((p) => `${x(p.t).toFixed(1)},${y(f(p)).toFixed(1)}`).join(" ");
    const area = (f) => shown.length
      ? `${x(shown[0].t).toFixed(1)},${H} ${line(f)} ${x(shown[shown.length - 1].t).toFixed(1)},${H}`
      : "";
    svg.innerHTML =
      `<line class="grid" x1="0" x2="${W}" y1="${y(top)}" y2="${y(top)}"/>` +
      `<line class="grid" x1="0" x2="${W}" y1="${y(top / 2)}" y2="${y(top / 2)}"/>` +
      `<polygon class="area ok" points="${area((p) => p.ok + p.fail)}"/>` +
      `<polygon class="area fail" points="${area((p) => p.fail)}"/>` +
      `<polyline class="line ok" points="${line((p) => p.ok + p.fail)}"/>` +
      `<polyline class="line fail" points="${line((p) => p.fail)}"/>`;
    // Text stays out of the stretched SVG: the scale is said in the legend.
    set("chart-span", `· top line ${top.toFixed(top < 10 ? 1 : 0)}/s · last ` +
      `${Math.round(span / 60) || 1} min`);
  }

  function renderStates() {
    const box = document.getElementById("states");
    const counts = view.counts;
    if (!counts) {
      box.innerHTML = '<p class="muted">Too many tasks stored to count them here.</p>';
      return;
    }
    const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
    const link = (s) => C.url(`/tasks?state=${encodeURIComponent(s)}`);
    box.innerHTML = view.states.map((s) => {
      const n = counts[s] || 0;
      const pct = (100 * n) / total;
      return `<a class="state-row" href="${C.esc(link(s))}">` +
        `<span class="state-name">${C.stateBadge(s)}</span>` +
        `<span class="bar"><span class="fill state-${s}" data-pct="${pct.toFixed(2)}"></span>` +
        `</span><span class="state-n" data-state-count="${s}">${n}</span></a>`;
    }).join("");
    // Widths through the CSSOM: the page's CSP allows no inline style attributes.
    for (const el of box.querySelectorAll(".fill")) el.style.width = `${el.dataset.pct}%`;
  }

  function renderWorkers() {
    const tbody = document.querySelector("#workers tbody");
    const names = Object.keys(view.workers).sort();
    const wc = view.worker_counts || {};
    if (!names.length) {
      tbody.innerHTML = '<tr><td colspan="8" class="muted">No worker seen yet.</td></tr>';
      return;
    }
    tbody.innerHTML = names.map((name) => {
      const w = view.workers[name];
      const c = wc[name] || {};
      const load = Array.isArray(w.loadavg)
        ? w.loadavg.map((v) => Number(v).toFixed(2)).join(" ") : "—";
      const known = view.worker_counts ? (n) => n || 0 : () => "—";
      return `<tr data-worker="${C.esc(name)}">` +
        `<td><a href="${C.esc(C.url("/worker/" + encodeURIComponent(name)))}">` +
        `${C.esc(name)}</a></td><td>${C.statusBadge(w.online)}</td>` +
        `<td>${C.esc(w.active ?? "—")}</td><td>${C.esc(w.processed ?? "—")}</td>` +
        `<td>${known(c.SUCCESS)}</td><td>${known(c.FAILURE)}</td><td>${C.esc(load)}</td>` +
        `<td>${C.timeHtml(w.last_heartbeat)}</td></tr>`;
    }).join("");
  }

  function render() {
    const workers = Object.values(view.workers);
    const online = workers.filter((w) => w.online);
    set("n-online", online.length);
    set("n-offline", workers.length - online.length);
    set("n-active", online.reduce((a, w) => a + (Number(w.active) || 0), 0));
    set("n-total", view.total ?? "—");
    const points = rates();
    const last = points.slice(-3);
    const ev = last.length ? last.reduce((a, p) => a + p.events, 0) / last.length : 0;
    set("n-rate", ev.toFixed(ev < 10 ? 1 : 0));
    const end = points.length ? points[points.length - 1].t : 0;
    const minute = points.filter((p) => p.t > end - 60);
    const fails = minute.reduce((a, p) => a + p.failN, 0);
    const done = minute.reduce((a, p) => a + p.okN + p.failN, 0);
    set("n-failrate", done ? `${fails} (${Math.round((100 * fails) / done)} %)` : "0");
    renderStates();
    renderWorkers();
    drawChart(points);
  }

  C.onStream((m) => {
    view.workers = m.workers || {};
    view.counts = m.counts;
    view.worker_counts = m.worker_counts;
    view.total = m.total;
    if (m.hello) samples = m.samples || [];
    else samples = samples.concat(m.samples || []);
    if (samples.length > 1000) samples = samples.slice(-1000);
    render();
  });

  render();
})();

// The history charts are drawn on the server (from the store, and the queue lengths from the
// sampler): fetch this page again now and then and swap in the fresh sections (only while the
// tab is visible).
(() => {
  const EVERY = 15000;
  const SECTIONS = ["clusters", "history", "queue-history"];

  async function refresh() {
    if (!document.getElementById("history") || document.hidden) return;
    try {
      const r = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const id of SECTIONS) {
        const current = document.getElementById(id);
        const fresh = doc.getElementById(id);
        if (current && fresh) {
          current.replaceWith(document.importNode(fresh, true));
          C.localizeTimes(document.getElementById(id));
        }
      }
    } catch (err) {
      // the next round tries again
    }
  }

  setInterval(refresh, EVERY);
})();
