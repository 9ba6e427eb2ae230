// The EDPO operations dashboard: renders the monitor's overview, live from /feed (server-sent events).
"use strict";
const FINAL = new Set(["DELIVERED", "CANCELLED", "REJECTED"]);
const $ = (id) => document.getElementById(id);
let selected = null, selectedStamp = null, lastOverview = null, searching = "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
const fill = (id, ...nodes) => $(id).replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
const time = (t) => t ? new Date(t).toLocaleTimeString([], {hour12: false}) + "." + String(new Date(t).getMilliseconds()).padStart(3, "0") : "";
const short = (id) => id ? id.slice(0, 8) : "";
const status = (s) => el("span", {class: "st " + s, "data-status": s}, s);
const link = (href, text) => el("a", {href, target: "_blank", rel: "noopener"}, text);
const empty = (text) => el("li", {class: "empty"}, text);

async function getJson(url) {
  const r = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
  if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  if (!r.ok) throw new Error(url + " answered " + r.status);
  return r.json();
}

function orderRow(b) {
  return el("tr", {"data-order-id": b.order_id, "data-status": b.status, class: b.order_id === selected ? "sel" : null,
                   onclick: () => select(b.order_id)},
    el("td", {title: b.order_id}, el("code", {}, short(b.order_id))), el("td", {}, status(b.status)),
    el("td", {class: "muted"}, time(b.updated_at)));
}

function chart(minutes) {
  const svg = $("chart"), W = 600, H = 150, pad = 18;
  const max = Math.max(1, ...minutes.map((m) => Math.max(m.placed, m.delivered)));
  const x = (i) => pad + i * (W - 2 * pad) / Math.max(1, minutes.length - 1);
  const y = (v) => H - pad - v * (H - 2 * pad) / max;
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs) => { const n = document.createElementNS(ns, tag); for (const k in attrs) n.setAttribute(k, attrs[k]); return n; };
  const parts = [node("line", {x1: pad, x2: W - pad, y1: y(0), y2: y(0), class: "grid"}),
                 node("line", {x1: pad, x2: W - pad, y1: y(max), y2: y(max), class: "grid"})];
  const top = node("text", {x: 2, y: y(max) + 3}); top.textContent = max; parts.push(top);
  for (const [key, color, dash] of [["delivered", "var(--delivered)", ""], ["placed", "var(--placed)", "5 3"]]) {
    const pts = minutes.map((m, i) => `${x(i).toFixed(1)},${y(m[key]).toFixed(1)}`).join(" ");
    parts.push(node("polyline", {points: pts, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash, "data-series": key}));
  }
  if (minutes.length) {
    const now = node("text", {x: W - pad - 20, y: H - 3}); now.textContent = "now"; parts.push(now);
  }
  svg.replaceChildren(...parts);
}

function bars(rows) {
  const max = Math.max(1, ...rows.map((r) => Math.max(r.on_hand, 0) + r.waiting));
  return rows.map((r) => {
    const pct = (v) => `${(100 * Math.max(v, 0) / max).toFixed(1)}%`;
    return el("div", {class: "bar", "data-sku": r.sku},
      el("code", {}, r.sku),
      el("div", {class: "track", title: `on hand ${r.on_hand}, reserved ${r.reserved}, waiting ${r.waiting}`},
        el("div", {class: "a", style: `width:${pct(r.available)}`}), el("div", {class: "r", style: `width:${pct(r.reserved)}`}),
        el("div", {class: "w", style: `width:${pct(r.waiting)}`})),
      el("span", {class: "muted"}, `${r.on_hand} on hand · ${r.reserved} res. · ${r.waiting} wait`));
  });
}

function listing(id, countId, l, what) {
  fill(countId, `${l.count} open`);
  $(countId).dataset.count = l.count;
  fill(id, l.items.length ? l.items.map((i) => el("li", {"data-id": i.id},
    link(i.url, i.name), " ", i.order_id ? el("a", {href: "#order=" + i.order_id, onclick: (e) => { e.preventDefault(); select(i.order_id); }}, el("code", {}, short(i.order_id))) : "",
    " ", el("span", {class: "muted"}, time(i.created)), i.detail ? el("small", {class: "muted"}, " " + i.detail) : ""))
    : empty(`no ${what}`));
  if (l.count > l.items.length) $(id).append(el("li", {}, link(l.url, `all ${l.count}…`)));
}

function render(o) {
  lastOverview = o;
  fill("clock", "updated " + time(o.time));
  fill("total", `${o.orders} orders`);
  $("cockpit").href = o.cockpit; $("tasklist").href = o.tasklist;
  fill("counts", Object.entries(o.counts).map(([s, n]) => el("div", {class: "tile", "data-status": s, "data-count": n}, el("b", {}, n), el("span", {}, s))));
  chart(o.throughput);
  if (!searching) fill("recent", o.recent.map(orderRow));
  fill("stock", rowsOr(bars(o.stock), "no stock announced yet"));
  fill("batches", o.batches.length ? o.batches.map((b) => el("li", {}, el("code", {}, b.sku), ` ${b.quantity} units since ${time(b.started_at)}`)) : empty("none in production"));
  const d = o.deliveries;
  fill("deliveries", el("div", {class: "tiles"},
    el("div", {class: "tile", id: "in-transit"}, el("b", {}, d.in_transit), el("span", {}, "in transit")),
    el("div", {class: "tile"}, el("b", {}, d.failed_attempts), el("span", {}, "failed attempts")),
    el("div", {class: "tile"}, el("b", {}, d.failed_orders), el("span", {}, "orders with a failure"))));
  listing("escalations", "esc-count", o.escalations, "open user tasks");
  listing("incidents", "inc-count", o.incidents, "incidents");
  const dl = o.dead_letters;
  fill("dl-count", el("a", {href: "/dead-letters", target: "_blank"}, `${dl.count} open, ${dl.total} in all`));
  fill("dead-letters", dl.items.length ? dl.items.map((r) => el("li", {}, el("code", {}, short(r.letter.id)), ` ${r.letter.topic}[${r.letter.partition}]@${r.letter.offset} `,
    r.letter.replayed ? el("span", {class: "st DELIVERED"}, "replayed") : "", el("small", {class: "muted"}, " " + r.letter.reason))) : empty("no dead letters"));
  fill("lag", o.lag.length ? o.lag.map((g) => el("tr", {"data-group": g.group, "data-lag": g.lag}, el("td", {}, g.group.replace(/^edpo-/, "")),
    el("td", {class: g.lag > 100 ? "error" : ""}, g.lag), el("td", {class: "muted"}, `${g.partitions} partitions`))) : [el("tr", {}, el("td", {class: "empty"}, o.looked_at ? "no consumer groups" : "looking…"))]);
  fill("problems", o.problems.join("; "));
  if (selected) {
    const b = o.recent.find((r) => r.order_id === selected);
    if (b && b.updated_at !== selectedStamp) loadDetail(selected);
  }
}
const rowsOr = (rows, text) => rows.length ? rows : [el("p", {class: "empty"}, text)];

async function loadDetail(id) {
  let d;
  try { d = await getJson("/orders/" + encodeURIComponent(id)); }
  catch (e) { if (id === selected) fill("detail", el("p", {class: "error"}, `${id}: not found (${e.message})`)); return; }
  if (id !== selected) return;
  selectedStamp = d.order.updated_at;
  fill("detail-id", el("code", {}, id));
  const head = el("p", {}, status(d.order.status), " trace ", el("code", {id: "trace"}, d.order.trace_id || "–"),
    ...d.instances.map((i) => [" · ", link(i.url, `instance ${short(i.id)} (${i.state.toLowerCase()}) in Cockpit`)]),
    ...d.open_tasks.map((t) => [" · ", link(t.url, `open task: ${t.name}`)]));
  const lines = d.lines.length ? el("p", {class: "muted"}, d.lines.map((l) => `${l.sku} ×${l.quantity}`).join(", ")) : null;
  const steps = el("ol", {class: "timeline", id: "timeline"}, d.steps.map((s) => el("li", {class: s.source === "engine" ? (s.kind === "incident" ? "incident" : "engine") : "", "data-kind": s.kind, "data-name": s.name, "data-time": s.time},
    el("span", {class: "mono"}, time(s.time)), el("span", {class: "muted"}, s.source),
    el("span", {}, el("b", {}, s.name), s.detail ? " " + s.detail : "", el("small", {}, s.kind === "event" ? `trace ${short(s.trace_id)} · ${s.topic}` : s.kind)))));
  fill("detail", head, lines, d.problems.length ? el("p", {class: "error"}, d.problems.join("; ")) : null, steps);
  for (const tr of document.querySelectorAll("#recent tr")) tr.classList.toggle("sel", tr.dataset.orderId === id);
}

function select(id) {
  selected = id; selectedStamp = null;
  if (location.hash !== "#order=" + id) history.replaceState(null, "", "#order=" + id);
  fill("detail-id", el("code", {}, id)); fill("detail", el("p", {class: "muted"}, "loading…"));
  loadDetail(id);
}

async function search(text) {
  searching = text.trim();
  if (!searching) { fill("search-result"); if (lastOverview) render(lastOverview); return; }
  try {
    const found = await getJson("/orders?q=" + encodeURIComponent(searching));
    if (searching !== text.trim()) return;
    fill("search-result", el("p", {class: "muted"}, `${found.orders.length} found for “${searching}”`));
    fill("recent", found.orders.map(orderRow));
  } catch (e) { fill("search-result", el("p", {class: "error"}, e.message)); }
}

function connect() {
  // A stream ends every minute and the browser reconnects at once: only a gap that lasts is shown.
  let gap = null;
  const feed = new EventSource("/feed");
  feed.addEventListener("overview", (e) => {
    clearTimeout(gap); gap = null;
    $("live").className = "live on"; $("live").textContent = "live"; render(JSON.parse(e.data));
  });
  feed.onerror = () => {
    if (gap === null) gap = setTimeout(() => { $("live").className = "live off"; $("live").textContent = "reconnecting"; }, 3000);
    fetch("/overview", {credentials: "same-origin"}).then((r) => { if (r.status === 401) location.href = "/login"; }).catch(() => {});
  };
}

$("q").addEventListener("input", (e) => search(e.target.value));
$("search").addEventListener("submit", (e) => { e.preventDefault(); const v = $("q").value.trim(); if (v) select(v); });
// A still-unfinished order's process moves on without new events (user tasks, incidents): look again now and then.
setInterval(() => { if (selected && lastOverview) { const b = lastOverview.recent.find((r) => r.order_id === selected); if (!b || !FINAL.has(b.status)) loadDetail(selected); } }, 3000);
function fromHash() {
  const m = /^#order=(.+)$/.exec(location.hash);
  if (m && decodeURIComponent(m[1]) !== selected) select(decodeURIComponent(m[1]));
}
window.addEventListener("hashchange", fromHash);
fromHash();
connect();
