// The tasks table: filled from /api/tasks with the filters in the URL, kept live by the stream.
// On the first page in the default order (newest first) new tasks are inserted at the top as
// they arrive; elsewhere rows already shown are updated and new arrivals are counted.
"use strict";

(() => {
  const SORTABLE = ["name", "received", "started", "state"]; // what the store can sort on
  const FILTERS = ["state", "taskname", "workername", "search", "received_start",
    "received_end"];
  const TIMES = ["received_start", "received_end"]; // datetime-local "T" <-> the API's " "
  const HIDDEN_KEY = "celeriac.tasks.hidden";
  const form = document.getElementById("filters");
  const table = document.getElementById("tasks");
  const tbody = table.querySelector("tbody");
  const status = document.getElementById("task-status");
  let params = new URLSearchParams(location.search);
  let shown = 0;
  let arrived = 0;
  let reloadTimer = null;

  const limit = () => Number(params.get("limit")) || 20;
  const offset = () => Number(params.get("offset")) || 0;
  const defaultView = () => !params.get("sort_by") && offset() === 0;

  function cut(v, n = 80) {
    if (v === null || v === undefined) return "";
    const s = typeof v === "string" ? v : JSON.stringify(v);
    return s.length > n ? `${s.slice(0, n)}…` : s;
  }

  function rowHtml(t) {
    const link = C.url(`/task/${encodeURIComponent(t.uuid)}`);
    const outcome = t.state === "FAILURE" || t.state === "RETRY" ? t.exception : t.result;
    const worker = t.worker
      ? `<a href="${C.esc(C.url("/worker/" + encodeURIComponent(t.worker)))}">` +
        `${C.esc(t.worker)}</a>` : "";
    const code = (v) => `<td title="${C.esc(cut(v, 400))}"><code>${C.esc(cut(v))}</code></td>`;
    return `<td>${C.esc(t.name || "")}</td>` +
      `<td title="${C.esc(t.uuid)}"><a href="${C.esc(link)}"><code>${C.esc(t.uuid)}</code></a>` +
      `</td><td>${C.stateBadge(t.state)}</td>${code(t.args)}${code(t.kwargs)}${code(outcome)}` +
      `<td>${C.timeHtml(t.received)}</td><td>${C.timeHtml(t.started)}</td>` +
      `<td>${C.fmtDur(t.runtime)}</td><td>${worker}</td>`;
  }

  function makeRow(t) {
    const tr = document.createElement("tr");
    tr.dataset.uuid = t.uuid;
    tr.dataset.state = t.state || "";
    tr.dataset.ts = t.timestamp || 0;
    tr.innerHTML = rowHtml(t);
    return tr;
  }

  function apiQuery() {
    const q = new URLSearchParams();
    for (const k of [...FILTERS, "sort_by"]) if (params.get(k)) q.set(k, params.get(k));
    q.set("limit", limit());
    q.set("offset", offset());
    return q;
  }

  function setStatus() {
    const from = shown ? offset() + 1 : 0;
    document.getElementById("range").textContent = shown
      ? `${from}–${offset() + shown}` : "no tasks";
    document.getElementById("prev").disabled = offset() === 0;
    document.getElementById("next").disabled = shown < limit();
    status.textContent = arrived && !defaultView()
      ? `${arrived} new or changed since loaded — go to the first page to see them` : "";
  }

  async function load() {
    const r = await fetch(C.url(`/api/tasks?${apiQuery()}`), { credentials: "same-origin" });
    if (!r.ok) {
      tbody.innerHTML = `<tr><td colspan="10" class="error">${C.esc(await r.text())}</td></tr>`;
      shown = 0;
      setStatus();
      return;
    }
    const data = await r.json();
    const tasks = Object.values(data);
    tbody.replaceChildren(...tasks.map(makeRow));
    if (!tasks.length) {
      tbody.innerHTML = '<tr class="empty"><td colspan="10" class="muted">No tasks match.</td></tr>';
    }
    shown = tasks.length;
    arrived = 0;
    setStatus();
    markSort();
    applyColumns();
  }

  function scheduleReload(ms = 1000) {
    if (!reloadTimer) reloadTimer = setTimeout(() => { reloadTimer = null; load(); }, ms);
  }

  function navigate(changes) {
    for (const [k, v] of Object.entries(changes)) {
      if (v === null || v === "" || v === undefined) params.delete(k);
      else params.set(k, v);
    }
    history.replaceState(null, "", `${location.pathname}?${params}`);
    for (const k of [...FILTERS, "limit", "sort_by", "offset"]) {
      const field = form.elements[k];
      const value = params.get(k) || (k === "limit" ? "20" : "");
      if (field) field.value = TIMES.includes(k) ? value.replace(" ", "T") : value;
    }
    load();
  }

  function markSort() {
    const sort = params.get("sort_by") || "";
    for (const th of table.querySelectorAll("th[data-col]")) {
      const col = th.dataset.col;
      th.classList.toggle("sortable", SORTABLE.includes(col));
      th.dataset.dir = sort === col ? "asc" : sort === `-${col}` ? "desc" : "";
    }
  }

  // Choosable columns: remembered in this browser, applied to every row drawn.
  function hiddenColumns() {
    try {
      return new Set(JSON.parse(localStorage.getItem(HIDDEN_KEY) || "[]"));
    } catch (err) {
      return new Set();
    }
  }

  function applyColumns(only) {
    const hidden = hiddenColumns();
    const cols = [...table.querySelectorAll("th[data-col]")].map((th) => th.dataset.col);
    const rows = only ? [only] : [table.tHead.rows[0], ...tbody.rows];
    for (const tr of rows) {
      if (tr.cells.length !== cols.length) continue; // "no tasks" and "loading" rows
      cols.forEach((c, i) => { tr.cells[i].hidden = hidden.has(c); });
    }
  }

  const picker = document.getElementById("columns");
  for (const box of picker.querySelectorAll("input[name=col]")) {
    box.checked = !hiddenColumns().has(box.value);
    box.addEventListener("change", () => {
      const hidden = [...picker.querySelectorAll("input[name=col]")]
        .filter((b) => !b.checked).map((b) => b.value);
      localStorage.setItem(HIDDEN_KEY, JSON.stringify(hidden));
      applyColumns();
    });
  }

  function matches(t) {
    const eq = (a, b) => String(a || "").toLowerCase() === String(b || "").toLowerCase();
    if (params.get("state") && t.state !== params.get("state").toUpperCase()) return false;
    if (params.get("taskname") && !eq(t.name, params.get("taskname"))) return false;
    if (params.get("workername") && !eq(t.worker, params.get("workername"))) return false;
    const from = params.get("received_start");
    const to = params.get("received_end");
    if (from || to) {
      if (typeof t.received !== "number") return false;
      const at = t.received * 1000;
      if (from && at <= new Date(from.replace(" ", "T")).getTime()) return false;
      if (to && at >= new Date(to.replace(" ", "T")).getTime()) return false;
    }
    return true;
  }

  function live(m) {
    if (m.hello) return;
    if (m.reset || (m.more && defaultView())) {
      scheduleReload();
      return;
    }
    const fresh = [];
    for (const t of m.tasks) {
      const tr = tbody.querySelector(`tr[data-uuid="${CSS.escape(t.uuid)}"]`);
      if (tr) {
        if (!matches(t)) continue; // left the filter: it stays until the next reload
        tr.innerHTML = rowHtml(t);
        tr.dataset.state = t.state || "";
        tr.dataset.ts = t.timestamp || 0;
        tr.classList.remove("flash");
        void tr.offsetWidth; // restart the highlight animation
        tr.classList.add("flash");
        applyColumns(tr);
      } else if (matches(t)) {
        fresh.push(t);
      }
    }
    if (!fresh.length) return;
    if (!defaultView()) {
      arrived += fresh.length;
      setStatus();
      return;
    }
    if (params.get("search")) {
      scheduleReload(); // only the store knows what the search matches
      return;
    }
    const empty = tbody.querySelector("tr.empty");
    if (empty) empty.remove();
    // Newest first: each goes where its last event puts it (a task that finished long ago but
    // was only now seen by the stream may belong further down, or on a later page).
    for (const t of fresh) {
      const ts = t.timestamp || 0;
      const before = [...tbody.rows].find((r) => Number(r.dataset.ts) < ts);
      if (!before && tbody.rows.length >= limit()) continue;
      const tr = makeRow(t);
      tr.classList.add("flash");
      tbody.insertBefore(tr, before || null);
    }
    while (tbody.rows.length > limit()) tbody.deleteRow(-1);
    shown = tbody.rows.length;
    applyColumns();
    setStatus();
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const changes = { offset: null };
    for (const k of [...FILTERS, "limit"]) {
      const v = f.get(k);
      changes[k] = TIMES.includes(k) && v ? v.replace("T", " ") : v;
    }
    navigate(changes);
  });
  for (const sel of form.querySelectorAll("select")) {
    sel.addEventListener("change", () => form.requestSubmit());
  }
  let typing = null;
  form.elements.search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => form.requestSubmit(), 400);
  });
  table.querySelector("thead").addEventListener("click", (e) => {
    const th = e.target.closest("th[data-col]");
    if (!th || !SORTABLE.includes(th.dataset.col)) return;
    const col = th.dataset.col;
    const sort = params.get("sort_by");
    navigate({ sort_by: sort === col ? `-${col}` : sort === `-${col}` ? null : col, offset: null });
  });
  document.getElementById("prev").addEventListener("click", () => {
    navigate({ offset: Math.max(0, offset() - limit()) || null });
  });
  document.getElementById("next").addEventListener("click", () => {
    navigate({ offset: offset() + limit() });
  });

  // Listen before the first load, and hold what arrives meanwhile: nothing falls in between.
  let held = [];
  C.onStream((m) => (held ? held.push(m) : live(m)));
  load().then(() => {
    const early = held;
    held = null;
    for (const m of early) live(m);
  });
})();

// Acting on every task of the filter: a dry run first (how many, which), then the real thing
// after a confirmation, with the outcome of each task. Exports follow the filter too.
(() => {
  const FILTERS = ["state", "taskname", "workername", "search", "received_start",
    "received_end"];
  const panel = document.getElementById("bulk");
  const summary = document.getElementById("bulk-summary");
  const confirmBtn = document.getElementById("bulk-confirm");
  const tbody = document.querySelector("#bulk-tasks tbody");
  const SHOWN = 200; // rows listed in the panel; the counts cover them all
  let pending = null;

  function filters() {
    const now = new URLSearchParams(location.search);
    const q = new URLSearchParams();
    for (const k of FILTERS) if (now.get(k)) q.set(k, now.get(k));
    return q;
  }

  function describe() {
    const q = filters();
    const parts = [...q.entries()].map(([k, v]) => `${k}=${v}`);
    return parts.length ? parts.join(", ") : "no filter: every task stored";
  }

  function updateExports() {
    for (const fmt of ["csv", "jsonl"]) {
      const q = filters();
      q.set("format", fmt);
      document.getElementById(`export-${fmt}`).href =
        C.url(`/api/celeriac/tasks/export?${q}`);
    }
  }

  function rows(reply) {
    tbody.innerHTML = reply.tasks.slice(0, SHOWN).map((t) => {
      const link = C.url(`/task/${encodeURIComponent(t.uuid)}`);
      let detail = t.reason ? C.esc(t.reason) : "";
      if (t["task-id"]) {
        detail = `sent as <a class="new-task" href="${C.esc(C.url("/task/" +
          encodeURIComponent(t["task-id"])))}"><code>${C.esc(t["task-id"])}</code></a>`;
      } else if (t.queue || t.routing_key) {
        detail = `to ${C.esc(t.queue || `${t.exchange} / ${t.routing_key}`)}`;
      }
      return `<tr data-uuid="${C.esc(t.uuid)}" data-outcome="${C.esc(t.outcome)}">` +
        `<td>${C.esc(t.name || "")}</td><td><a href="${C.esc(link)}"><code>` +
        `${C.esc(t.uuid)}</code></a></td><td>${C.stateBadge(t.state)}</td>` +
        `<td class="outcome-${C.esc(t.outcome)}">${C.esc(t.outcome)}</td><td>${detail}</td></tr>`;
    }).join("") || '<tr><td colspan="5" class="muted">No tasks match.</td></tr>';
  }

  async function call(action, dryRun) {
    const q = filters();
    q.set("dry_run", dryRun ? "true" : "false");
    q.set("cap", document.getElementById("bulk-cap").value || "1000");
    if (action === "revoke" && document.getElementById("bulk-terminate").checked) {
      q.set("terminate", "true");
    }
    const r = await fetch(C.url(`/api/celeriac/tasks/${action}?${q}`), {
      method: "POST", credentials: "same-origin",
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}: ${text}`);
    return JSON.parse(text);
  }

  function verb(action) {
    return action === "rerun" ? "re-run" : "revoke";
  }

  async function dryRun(action) {
    panel.hidden = false;
    panel.dataset.state = "dry-run";
    confirmBtn.hidden = true;
    summary.className = "reply busy";
    summary.textContent = "counting the matching tasks…";
    tbody.innerHTML = "";
    try {
      const reply = await call(action, true);
      const s = reply.summary;
      const more = reply.more
        ? ` More than ${reply.cap} match: only the newest ${reply.cap} would be acted on.` : "";
      const skipped = s.skipped ? ` ${s.skipped} will be skipped (already finished).` : "";
      const errors = s.error ? ` ${s.error} cannot be ${verb(action)} (see below).` : "";
      summary.className = "reply";
      summary.textContent = `Dry run: ${reply.matched} tasks match (${describe()}); ` +
        `${s.ok} would be ${action === "rerun" ? "sent again" : "revoked"}.` +
        `${skipped}${errors}${more}`;
      rows(reply);
      if (s.ok) {
        pending = action;
        confirmBtn.hidden = false;
        confirmBtn.textContent = `${action === "rerun" ? "Re-run" : "Revoke"} ${s.ok} tasks`;
      }
    } catch (err) {
      summary.className = "reply err";
      summary.textContent = String(err.message || err);
    }
  }

  async function run() {
    const action = pending;
    if (!action) return;
    if (!window.confirm(`${verb(action)} ${confirmBtn.textContent.split(" ")[1]} tasks ` +
      `(${describe()})? This cannot be undone.`)) return;
    confirmBtn.hidden = true;
    pending = null;
    summary.className = "reply busy";
    summary.textContent = "working…";
    try {
      const reply = await call(action, false);
      const s = reply.summary;
      summary.className = `reply ${s.error ? "err" : "ok"}`;
      panel.dataset.state = "done";
      summary.textContent = `Done: ${s.ok} ${action === "rerun" ? "sent again" : "revoked"}` +
        `${s.skipped ? `, ${s.skipped} skipped` : ""}${s.error ? `, ${s.error} failed` : ""}.`;
      rows(reply);
    } catch (err) {
      summary.className = "reply err";
      summary.textContent = String(err.message || err);
    }
  }

  for (const id of ["bulk-rerun", "bulk-revoke"]) {
    const btn = document.getElementById(id);
    btn.addEventListener("click", () => dryRun(btn.dataset.action));
  }
  confirmBtn.addEventListener("click", run);
  document.getElementById("bulk-close").addEventListener("click", () => {
    panel.hidden = true;
    pending = null;
  });
  // The filter lives in the URL (history.replaceState): follow it.
  const replace = history.replaceState.bind(history);
  history.replaceState = (...a) => {
    replace(...a);
    updateExports();
    if (!panel.hidden && panel.dataset.state === "dry-run") panel.hidden = true;
  };
  updateExports();
})();
