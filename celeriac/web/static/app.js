// celeriac: what every page shares. URLs, formatting, the live stream, and action buttons.
// Buttons and forms with class "act" post to the JSON API:
//   data-post="URL"   where to POST (already carries the URL prefix)
//   data-confirm="…"  ask first (everything destructive has one)
//   data-out="id"     the <output> that shows the reply
//   data-form="a=b"   arguments for a button; forms send their fields (both in the query)
//   data-json="#id"   a JSON body taken from a <script type="application/json">
//   data-after="reload" | "goto-task"   what to do once the reply is a success
"use strict";

const C = (() => {
  const meta = document.querySelector('meta[name="celeriac-base"]');
  const base = meta ? meta.content : "";

  function url(path) {
    return base + path;
  }

  function esc(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    }[c]));
  }

  function pad(n, w = 2) {
    return String(n).padStart(w, "0");
  }

  function fmtTime(ts) {
    if (typeof ts !== "number") return "—";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` +
      `.${pad(d.getMilliseconds(), 3)}`;
  }

  function fmtDur(s) {
    if (typeof s !== "number") return "—";
    if (s < 0.001) return `${Math.round(s * 1e6)} µs`;
    if (s < 1) return `${(s * 1000).toFixed(1)} ms`;
    if (s < 120) return `${s.toFixed(2)} s`;
    if (s < 7200) return `${(s / 60).toFixed(1)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  function timeHtml(ts) {
    if (typeof ts !== "number") return '<span class="muted">—</span>';
    return `<time data-ts="${ts}" title="${new Date(ts * 1000).toISOString()}">` +
      `${fmtTime(ts)}</time>`;
  }

  function localizeTimes(root) {
    for (const t of root.querySelectorAll("time[data-ts]")) {
      const ts = Number(t.dataset.ts);
      t.textContent = fmtTime(ts);
      t.title = new Date(ts * 1000).toISOString();
    }
  }

  function stateBadge(state) {
    const s = esc(state || "UNKNOWN");
    return `<span class="badge state-${s}">${s}</span>`;
  }

  function statusBadge(online) {
    const w = online ? "online" : "offline";
    return `<span class="badge ${w}">${w}</span>`;
  }

  // -- the live stream: one EventSource per page, shared by every listener ------------------
  const listeners = [];
  let source = null;

  function setLive(on) {
    const dot = document.getElementById("live");
    if (!dot) return;
    dot.classList.toggle("on", on);
    dot.title = on ? "live updates on" : "live updates reconnecting…";
  }

  function onStream(fn) {
    listeners.push(fn);
    if (source) return;
    source = new EventSource(url("/ui/stream"));
    source.onopen = () => setLive(true);
    source.onerror = () => setLive(false);
    source.onmessage = (e) => {
      setLive(true);
      let message;
      try {
        message = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      for (const f of listeners) {
        try {
          f(message);
        } catch (err) {
          console.error(err);
        }
      }
    };
    window.addEventListener("pagehide", () => source && source.close());
  }

  // -- partial reloads: fetch this page again and swap <main>, keeping the replies shown -----
  let reloading = null;

  async function reloadMain() {
    if (reloading) return reloading;
    reloading = (async () => {
      try {
        const r = await fetch(location.href, { headers: { Accept: "text/html" } });
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("main");
        const current = document.getElementById("main");
        if (!fresh || !current) return;
        for (const out of current.querySelectorAll("output[id]")) {
          const twin = fresh.querySelector(`#${CSS.escape(out.id)}`);
          if (twin) {
            twin.innerHTML = out.innerHTML;
            twin.className = out.className;
          }
        }
        current.replaceWith(fresh);
        localizeTimes(fresh);
        document.dispatchEvent(new CustomEvent("celeriac:reloaded"));
      } finally {
        reloading = null;
      }
    })();
    return reloading;
  }

  // -- actions --------------------------------------------------------------------------------
  async function post(el, target, body, headers) {
    if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
    if (body instanceof URLSearchParams) {
      // Arguments go in the query string, which every endpoint reads (as Flower's do).
      const extra = body.toString();
      if (extra) target += (target.includes("?") ? "&" : "?") + extra;
      body = null;
    }
    const out = el.dataset.out ? document.getElementById(el.dataset.out) : null;
    if (out) {
      out.className = "reply busy";
      out.textContent = "waiting for the reply…";
    }
    el.classList.add("busy");
    let ok = false;
    let reply = null;
    let text = "";
    try {
      const r = await fetch(target, { method: "POST", body, headers, credentials: "same-origin" });
      text = await r.text();
      ok = r.ok;
      try {
        reply = JSON.parse(text);
      } catch (err) {
        reply = null;
      }
      if (!ok) text = `${r.status} ${r.statusText}: ${text}`;
      else if (reply && reply.message) text = reply.message;
      else if (reply && reply["task-id"]) text = `sent as ${reply["task-id"]} (${reply.state})`;
    } catch (err) {
      text = `request failed: ${err}`;
    } finally {
      el.classList.remove("busy");
    }
    // The page may have been redrawn meanwhile: write to the output that is there now.
    const shown = el.dataset.out ? document.getElementById(el.dataset.out) : null;
    if (shown) {
      shown.className = `reply ${ok ? "ok" : "err"}`;
      shown.textContent = text;
    }
    if (!ok) return;
    const after = el.dataset.after;
    if (after === "reload") {
      // Workers apply some commands a moment after they reply (a new pool process starts).
      setTimeout(reloadMain, 800);
      setTimeout(reloadMain, 3000);
    }
    if (after === "goto-task" && reply && reply["task-id"] && shown) {
      const id = reply["task-id"];
      shown.innerHTML = `Sent: <a href="${esc(url("/task/" + encodeURIComponent(id)))}">` +
        `${esc(id)}</a>`;
    }
  }

  document.addEventListener("click", (e) => {
    const el = e.target.closest("button.act[data-post]");
    if (!el || el.disabled) return;
    e.preventDefault();
    let body = null;
    const headers = {};
    if (el.dataset.json) {
      const src = document.querySelector(el.dataset.json);
      body = src ? src.textContent : "{}";
      headers["Content-Type"] = "application/json";
    } else if (el.dataset.form) {
      body = new URLSearchParams(el.dataset.form);
    }
    post(el, el.dataset.post, body, headers);
  });

  document.addEventListener("submit", (e) => {
    const form = e.target.closest("form.act");
    if (!form) return;
    e.preventDefault();
    const fields = new FormData(form);
    if (form.classList.contains("limits")) {
      // Per task type limits: the task name goes in the path, the worker in the body.
      const which = e.submitter ? e.submitter.value : "rate";
      const task = encodeURIComponent(fields.get("task") || "");
      const body = new URLSearchParams({ workername: form.dataset.workername });
      if (which === "rate") {
        body.set("ratelimit", fields.get("ratelimit") || "");
      } else {
        for (const k of ["soft", "hard"]) if (fields.get(k)) body.set(k, fields.get(k));
      }
      const path = which === "rate" ? "/api/task/rate-limit/" : "/api/task/timeout/";
      post(form, `${form.dataset.api}${path}${task}`, body, {});
      return;
    }
    post(form, form.dataset.post, new URLSearchParams(fields), {});
  });

  document.addEventListener("DOMContentLoaded", () => localizeTimes(document));

  return {
    base, url, esc, fmtTime, fmtDur, timeHtml, stateBadge, statusBadge, onStream, reloadMain,
    localizeTimes,
  };
})();
