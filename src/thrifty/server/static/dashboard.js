// thrifty dashboard: fetches /dashboard/data and draws every chart as inline SVG (no library).
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#5c7cfa", "#2b8a3e", "#f59f00", "#d9480f", "#ae3ec9", "#1098ad", "#868e96", "#e64980"];
  let period = new URLSearchParams(location.search).get("period") || "7d";

  // The admin key may arrive in the URL fragment (never sent to the server) or be typed in.
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("key")) {
    sessionStorage.setItem("thrifty-admin-key", frag.get("key"));
    history.replaceState(null, "", location.pathname + location.search);
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, s, anchor) {
    const t = el("text", { x: x, y: y, "text-anchor": anchor || "start" }, parent);
    t.textContent = s;
    return t;
  }
  function svg(container, w, h, label) {
    container.textContent = "";
    return el("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart-svg", role: "img", "aria-label": label }, container);
  }
  function usd(x) {
    const a = Math.abs(x);
    return (x < 0 ? "-$" : "$") + (a >= 100 ? a.toFixed(0) : a >= 1 ? a.toFixed(2) : a.toPrecision(3));
  }
  function pct(x) { return (100 * x).toFixed(1) + "%"; }
  // A saving's share, never rounded onto 0.0% or 100.0% it did not reach (the report's rule):
  // a cheap model's spend beside a premium baseline read "100.0%" saved, as if free.
  function share(p) { return p > 0 && p < 0.05 ? "<0.1%" : p >= 99.95 && p < 100 ? ">99.9%" : p.toFixed(1) + "%"; }
  function empty(container, msg) {
    container.textContent = "";
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = msg;
    container.appendChild(p);
  }

  function lineChart(container, series) {
    if (!series.length) return empty(container, "No requests in this period.");
    const W = 900, H = 260, L = 60, R = 16, T = 14, B = 30;
    const s = svg(container, W, H, "spend and baseline over time");
    const t0 = series[0].t, t1 = series[series.length - 1].t || t0 + 1;
    const ymax = Math.max(1e-9, ...series.map((p) => Math.max(p.spend_usd, p.baseline_usd))) * 1.1;
    const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
    const y = (v) => H - B - (v / ymax) * (H - T - B);
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, s);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, s);
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      el("line", { x1: L, y1: y(v), x2: W - R, y2: y(v), class: "axis", "stroke-opacity": 0.4 }, s);
      text(s, L - 6, y(v) + 4, usd(v), "end");
    }
    const fmt = (t) => new Date(t * 1000).toISOString().slice(5, 16).replace("T", " ");
    text(s, L, H - 8, fmt(t0));
    text(s, W - R, H - 8, fmt(t1), "end");
    for (const [key, cls] of [["baseline_usd", "baseline"], ["spend_usd", "spend"]]) {
      const pts = series.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
      const d = "M" + pts.join(" L");
      el("path", { d: series.length === 1 ? d + " l0.1,0" : d, class: `series ${cls}`, "data-series": cls }, s);
      for (const p of series) el("circle", { cx: x(p.t), cy: y(p[key]), r: 2.5, class: `series ${cls}` }, s);
    }
    const lg = el("g", { transform: `translate(${W - R - 250},${T})` }, s);
    el("rect", { x: 0, y: 0, width: 12, height: 3, fill: "#d9480f" }, lg);
    text(lg, 16, 5, "spend");
    el("rect", { x: 80, y: 0, width: 12, height: 3, fill: "#5c7cfa" }, lg);
    text(lg, 96, 5, "baseline (premium model)");
  }

  function barChart(container, rows, label, value, fmt, title, width, note) {
    if (!rows.length) return empty(container, "Nothing yet.");
    const W = width || 440, rowH = 24, L = 130, R = note ? 130 : 70, H = rows.length * rowH + 10;
    const s = svg(container, W, H, title);
    const max = Math.max(1e-12, ...rows.map((r) => Math.abs(value(r))));
    rows.forEach((r, i) => {
      const v = value(r), w = (Math.abs(v) / max) * (W - L - R);
      text(s, L - 6, i * rowH + 17, label(r).slice(0, 20), "end");
      el("rect", { x: L, y: i * rowH + 5, width: Math.max(1, w), height: rowH - 8, class: v < 0 ? "bar neg" : "bar",
                   "data-label": label(r) }, s);
      text(s, L + Math.max(1, w) + 4, i * rowH + 17, fmt(v) + (note ? note(r) : ""));
    });
  }

  function donut(container, rows) {
    const total = rows.reduce((a, r) => a + r.requests, 0);
    if (!total) return empty(container, "No answered requests.");
    const W = 440, H = 200, cx = 100, cy = 100, r = 80, r0 = 48;
    const s = svg(container, W, H, "tier mix");
    let a0 = -Math.PI / 2;
    rows.forEach((row, i) => {
      const frac = row.requests / total;
      const a1 = a0 + frac * 2 * Math.PI - (frac === 1 ? 1e-4 : 0);
      const large = a1 - a0 > Math.PI ? 1 : 0;
      const p = (rad, ang) => `${cx + rad * Math.cos(ang)},${cy + rad * Math.sin(ang)}`;
      const d = `M${p(r, a0)} A${r},${r} 0 ${large} 1 ${p(r, a1)} L${p(r0, a1)} A${r0},${r0} 0 ${large} 0 ${p(r0, a0)} Z`;
      el("path", { d: d, fill: PALETTE[i % PALETTE.length], class: "slice", "data-tier": row.tier }, s);
      el("rect", { x: 210, y: 20 + i * 20, width: 10, height: 10, fill: PALETTE[i % PALETTE.length] }, s);
      text(s, 226, 29 + i * 20, `${row.tier}: ${row.requests} (${pct(frac)})`);
      a0 = a1;
    });
    text(s, cx, cy + 4, `${total} req`, "middle");
  }

  function cards(t) {
    const box = document.getElementById("cards");
    box.textContent = "";
    const items = [
      ["spend", usd(t.spend_usd)], ["baseline", usd(t.baseline_usd)],
      ["saved", `${usd(t.saved_usd)} (${share(t.saved_pct)})`],
      // Unpriced requests (a model without a price) are out of spend and saved, as in the report.
      ["requests", `${t.requests} (${t.errors} errors` +
                   (t.unpriced_requests ? `, ${t.unpriced_requests} unpriced, not in spend)` : ")")],
      ["cache hit rate", pct(t.cache_hit_rate)], ["escalation rate", pct(t.escalation_rate)],
    ];
    for (const [label, value] of items) {
      const c = document.createElement("div");
      c.className = "card";
      const b = document.createElement("b");
      b.textContent = value;
      const small = document.createElement("small");
      small.textContent = label;
      c.append(b, small);
      box.appendChild(c);
    }
  }

  function keysTable(keys) {
    const body = document.querySelector("#table-keys tbody");
    body.textContent = "";
    for (const k of keys) {
      const tr = document.createElement("tr");
      // usd() as everywhere on the page: toFixed(6) and toFixed(2) showed a cheap model's real
      // spend as 0.000000 and a $0.004 budget as 0.00.
      for (const v of [k.key_id, k.name, k.requests, usd(k.spend_usd), usd(k.saved_usd),
                       k.budget_usd == null ? "-" : usd(k.budget_usd)]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function render(d) {
    cards(d.totals);
    lineChart(document.getElementById("chart-spend"), d.series);
    // Labelled by what each is (chat through one model, the Responses API...); the request count
    // shows strategies that save nothing by design (the passthrough endpoints) were served.
    barChart(document.getElementById("chart-strategies"), d.strategies, (r) => r.label || r.strategy,
             (r) => r.saved_usd, usd, "savings per strategy", undefined, (r) => (r.requests ? ` · ${r.requests} req` : ""));
    donut(document.getElementById("chart-tiers"), d.tiers);
    barChart(document.getElementById("chart-rates"), [
      { name: "cache hit rate", v: d.totals.cache_hit_rate },
      { name: "escalation rate", v: d.totals.escalation_rate },
    ], (r) => r.name, (r) => r.v, pct, "rates");
    barChart(document.getElementById("chart-tasks"), d.tasks, (r) => r.task, (r) => r.spend_usd, usd, "top tasks");
    barChart(document.getElementById("chart-keys"), d.keys, (r) => (r.name || r.key_id), (r) => r.spend_usd, usd,
             "top keys", 900);
    keysTable(d.keys);
  }

  async function load() {
    for (const b of document.querySelectorAll("#periods button")) b.classList.toggle("active", b.dataset.period === period);
    const status = document.getElementById("status");
    status.textContent = "Loading…";
    document.body.dataset.ready = "0";
    const headers = {};
    const key = sessionStorage.getItem("thrifty-admin-key");
    if (key) headers.Authorization = "Bearer " + key;
    let resp;
    try {
      resp = await fetch("/dashboard/data?period=" + encodeURIComponent(period), { headers: headers });
    } catch (e) {
      status.textContent = "Cannot reach the gateway: " + e;
      return;
    }
    const body = await resp.json();
    if (resp.status === 401) {
      document.getElementById("login").hidden = false;
      document.getElementById("login-msg").textContent = body.error ? body.error.message : "";
      status.textContent = "";
      return;
    }
    if (!resp.ok) {
      status.textContent = body.error ? body.error.message : "Error " + resp.status;
      return;
    }
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    render(body);
    status.textContent = `${body.totals.requests} requests since ${new Date(body.since * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
    document.body.dataset.ready = "1";
  }

  document.getElementById("periods").addEventListener("click", (ev) => {
    const p = ev.target.dataset && ev.target.dataset.period;
    if (!p) return;
    period = p;
    history.replaceState(null, "", "?period=" + p);
    load();
  });
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("thrifty-admin-key", document.getElementById("admin-key").value);
    load();
  });
  load();
})();
