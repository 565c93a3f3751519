// Harken fleet page (docs/watch.md "The web page"). Reads the watcher's server-sent events
// and draws one card per machine. Every text that came from the broker is put into the page
// with textContent or as an attribute value set through the DOM, never as HTML: a name or a
// status is shown as the characters it is. The server's Content-Security-Policy allows no
// inline script and no other origin, so this file is the only script the page runs.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const ORDER = ["anomaly", "offline", "stopped", "stale", "maintenance", "ok", "waiting"];
const PAGE = 100;                     // cards drawn at first; "show more" adds as many again
const W = 360, H = 100;               // the chart's coordinates (stretched to the card)

const fleet = { rows: new Map(), skew: 0, window: 3600, header: null };
let limit = PAGE, dirty = true, cards = new Map();

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, String(attrs[k]));
  return e;
}
function now() { return Date.now() / 1000 + fleet.skew; }
function num(x) { return x === null || x === undefined ? "–" : Number(x).toPrecision(4).replace(/\.?0+(e|$)/, "$1"); }
function ago(s) {
  if (s < -60) return "clock ahead";
  s = Math.max(s, 0);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function clock(t) { return new Date((t - fleet.skew) * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }); }
// a gap of more than three report intervals (or buckets) is an absence: lines, bands and
// "since" all break there
function gapOf(row) { return 3 * Math.max(fleet.window / 360, Math.min(row.interval_s || 0, 120)); }
function lastAnomaly(row) {           // the start of the latest anomalous stretch in the hour
  let start = null, next = null;
  const gap = gapOf(row);
  for (let i = row.points.length - 1; i >= 0; i--) {
    const p = row.points[i];
    if (next !== null && next - p[0] > gap && start !== null) break;
    if (p[3] & 1) start = p[0];
    else if (start !== null) break;
    next = p[0];
  }
  return start;
}

function merge(incoming) {
  const old = fleet.rows.get(incoming.id);
  // a row sent whole with "reset" is a machine new to the pages (or forgotten and back):
  // what was drawn for that name before is not its hour
  const pts = old && !incoming.reset ? old.points : [];
  const c = incoming.points || { t: [] };       // columns: t, score, threshold, flags
  for (let k = 0; k < c.t.length; k++) {
    const p = [c.t[k], c.score[k], c.threshold[k], c.flags[k]];
    let i = pts.length;
    while (i > 0 && pts[i - 1][0] > p[0]) i--;
    if (i > 0 && pts[i - 1][0] === p[0]) pts[i - 1] = p; else pts.splice(i, 0, p);
  }
  const cut = now() - fleet.window;
  while (pts.length && pts[0][0] < cut) pts.shift();
  // a delta carries only the fields that changed: the rest stay as they were
  const row = old ? Object.assign(old, incoming) : incoming;
  row.points = pts;
  row.changed = true;
  fleet.rows.set(row.id, row);
}

function apply(msg) {
  fleet.skew = msg.now - Date.now() / 1000;
  fleet.window = msg.window_s;
  fleet.header = msg;
  if (msg.type === "snapshot") fleet.rows.clear();
  for (const r of msg.rows || []) merge(r);
  for (const id of msg.gone || []) fleet.rows.delete(id);
  dirty = true;
}

// The charts share one time axis: the hour, or less while the watcher has been up for less
// (from the oldest score any machine has, at least 5 minutes), so a fresh page is not blank.
function span() {
  let oldest = Infinity;
  for (const r of fleet.rows.values()) if (r.points.length) oldest = Math.min(oldest, r.points[0][0]);
  const seen = now() - oldest + fleet.window / 360;
  return Math.max(300, Math.min(fleet.window, isFinite(seen) ? seen : fleet.window));
}

function chart(row, width) {
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "chart",
                           role: "img", "aria-label": "score over the last " + Math.round(width / 60) + " min" });
  const t1 = now(), t0 = t1 - width;
  const pts = row.points.filter(p => p[0] >= t0);
  // from 0 (or the lowest score, where scores go below it) to above the threshold and the
  // highest score
  // (held within +-1e300: a difference of two values near the largest double is Infinity)
  const held = v => Math.max(-1e300, Math.min(1e300, v));
  let top = -Infinity, bottom = 0;
  for (const p of pts) for (const v of [p[1], p[2]]) if (v !== null) { top = Math.max(top, held(v)); bottom = Math.min(bottom, held(v)); }
  if (row.threshold !== null) { top = Math.max(top, held(row.threshold)); bottom = Math.min(bottom, held(row.threshold)); }
  if (!(top > bottom)) top = bottom + 1;
  top += (top - bottom) * 0.25;
  const step = fleet.window / 360;
  const x = t => ((t - t0) / width) * W;
  const y = v => H - ((held(v) - bottom) / (top - bottom)) * (H - 4);
  // an event: anomalous buckets with no calm one between them (missing buckets are no calm:
  // an agent reporting every 30 s fills one bucket in three)
  let run = null;
  const bands = [];
  const gap = gapOf(row);
  for (const p of pts) {
    if (p[3] & 2) box.appendChild(svg("rect", { class: "maintenance-band", x: x(p[0]), y: 0, width: Math.max(x(p[0] + step) - x(p[0]), 1), height: H }));
    if (p[3] & 1) {
      if (run && p[0] - run.end <= gap) run.end = p[0];
      else { run = { start: p[0], end: p[0] }; bands.push(run); }
    } else run = null;
  }
  for (const b of bands) {
    box.appendChild(svg("rect", { class: "anomaly-band", x: x(b.start), y: 0, width: Math.max(x(b.end + step) - x(b.start), 1.5), height: H }));
    const m = svg("rect", { class: "event-marker", x: Math.max(x(b.start) - 1, 0), y: 0, width: 3, height: 14 });
    const tip = svg("title", {});
    tip.textContent = "anomaly from " + clock(b.start);
    m.appendChild(tip);
    box.appendChild(m);
  }
  // a line per stretch without a gap (the agent was away)
  const line = (cls, idx) => {
    let coords = [], last = null;
    const flush = () => { if (coords.length) box.appendChild(svg("polyline", { class: cls, points: coords.join(" ") })); coords = []; };
    for (const p of pts) {
      if (p[idx] === null) continue;
      if (last !== null && p[0] - last > gap) flush();
      // each bucket a level across its 10 s: a lone bucket is a dash, never nothing
      const v = y(p[idx]).toFixed(1);
      coords.push(`${x(p[0]).toFixed(1)},${v}`, `${x(p[0] + step).toFixed(1)},${v}`);
      last = p[0];
    }
    flush();
  };
  line("threshold-line", 2);
  line("score-line", 1);
  return box;
}

function card(row, width) {
  let c = cards.get(row.id);
  if (!c) {
    c = el("article", "card");
    const title = el("div", "title");
    const name = el("span", "name");
    name.append(el("span", "node"), el("span", "machine"));
    title.append(name, el("span", "state"));
    const axis = el("div", "axis");
    axis.append(el("span", "from", ""), el("span", "", "now"));
    c.append(title, el("div", "figures"), el("div", "chart-box"), axis, el("div", "meta audio"), el("div", "meta model"), el("div", "meta seen"));
    cards.set(row.id, c);
  }
  c.dataset.state = row.state;
  c.dataset.node = row.node;
  c.dataset.machine = row.machine;
  c.dataset.seq = row.seq === null ? "" : String(row.seq);
  c.querySelector(".node").textContent = row.node + " / ";
  c.querySelector(".machine").textContent = row.machine;
  c.querySelector(".state").textContent = row.state;
  const fig = c.querySelector(".figures");
  fig.replaceChildren();
  const score = el("span", row.score !== null && row.threshold !== null && row.score > row.threshold ? "over" : "", "score " + num(row.score));
  fig.append(score, document.createTextNode(" / threshold " + num(row.threshold)));
  if (row.anomaly !== "ON" && row.anomaly !== "OFF" && row.anomaly !== "-")
    fig.append(document.createTextNode(" · anomaly " + row.anomaly));
  const since = lastAnomaly(row);     // said in words too: a phone has no hover
  if (since !== null) {
    const edge = since <= now() - fleet.window + fleet.window / 180;   // began before the hour
    // the oldest bucket this watcher holds: it may have begun before the watcher heard it
    const first = since === row.points[0][0] ? "at least " : "";
    const text = row.state === "anomaly"
      ? (edge ? " · anomalous for over an hour" : " · anomalous since " + first + clock(since))
      : " · last anomaly from " + (edge ? "before this hour" : first + clock(since));
    fig.append(el("span", "since", text));
  }
  // a chart is drawn again when its row changed, else every 10 s (the hour scrolls by a
  // bucket in that time): a marker's hover text stays up
  const t = Date.now();
  const box = c.querySelector(".chart-box");
  const hovered = box.matches(":hover") && t - (c.drawn || 0) < 60000;   // keep a hover text up
  if ((row.changed || !c.drawn || t - c.drawn > 10000 || c.width !== width) && !hovered) {
    box.replaceChildren(chart(row, width));
    c.querySelector(".from").textContent = "−" + Math.round(width / 60) + " min";
    c.drawn = t;
    c.width = width;
    row.changed = false;
  }
  const audio = c.querySelector(".audio");
  audio.replaceChildren();
  audio.append(document.createTextNode("audio " + (row.level_dbfs === null ? "–" : row.level_dbfs.toFixed(1) + " dBFS") + " · "));
  audio.append(el("span", row.audio === "ok" || row.audio === "-" ? "" : "warn", row.audio));
  c.querySelector(".model").textContent = (row.model || "model ?") + (row.backend ? " on " + row.backend : "");
  const seen = row.last_seen === null ? "no score yet" : ago(now() - (row.clock_unsynced ? row.heard : row.last_seen)) + (row.clock_unsynced ? ", clock not set" : "");
  c.querySelector(".seen").textContent = (row.status ? row.status + " · " : "") + (row.seq === null ? "" : "seq " + row.seq + " · ") + seen;
  return c;
}

function rank(r) { const i = ORDER.indexOf(r.state); return i < 0 ? ORDER.length : i; }

function render() {
  if (!fleet.header) return;
  const h = fleet.header;
  document.getElementById("prefix").textContent = "· " + h.prefix + "/";
  const banner = document.getElementById("banner");
  banner.replaceChildren(...h.banner.map(line => el("li", "level-" + line.level, line.text)));
  const all = [...fleet.rows.values()];
  const counts = {};
  for (const r of all) counts[r.state] = (counts[r.state] || 0) + 1;
  const summary = document.getElementById("summary");
  summary.replaceChildren(el("span", "", all.length + " machines"),
    ...ORDER.filter(s => counts[s]).map(s => el("span", "count-" + s, counts[s] + " " + s)));
  const q = document.getElementById("filter").value.trim().toLowerCase();
  const shown = all.filter(r => !q || r.node.toLowerCase().includes(q) || r.machine.toLowerCase().includes(q));
  shown.sort((a, b) => rank(a) - rank(b) || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0) || (a.machine < b.machine ? -1 : a.machine > b.machine ? 1 : 0));
  const page = shown.slice(0, limit);
  const width = Math.round(span() / 60) * 60;      // whole minutes: redrawn once a minute
  document.getElementById("cards").replaceChildren(...page.map(r => card(r, width)));
  for (const id of cards.keys()) if (!fleet.rows.has(id)) cards.delete(id);
  const more = document.getElementById("more");
  more.hidden = shown.length <= limit;
  document.getElementById("show-more").textContent = `show more (${page.length} of ${shown.length} shown)`;
  const notes = [];
  if (h.malformed) notes.push(h.malformed + " malformed message(s) skipped");
  if (h.forgotten) notes.push(h.forgotten + " machine(s) forgotten beyond the limit of " + h.max_machines);
  if (h.pruned) notes.push(h.pruned + " machine(s) forgotten after a long silence");
  if (h.stale_deaths) notes.push(h.stale_deaths + " stale Sparkplug death(s) ignored");
  document.getElementById("notes").textContent = notes.join(" · ");
  dirty = false;
}

// The browser reconnects by itself after a dropped stream, but gives up for good on an
// answer that is not 200 (a 503 "too many pages", a proxy's 502 while the watcher restarts):
// then this page opens a new stream itself, waiting longer each time (3 s to 60 s, jittered).
let tries = 0;
function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("events");
  source.onopen = () => { tries = 0; link.dataset.state = "live"; link.textContent = "live"; };
  source.onerror = () => {
    link.dataset.state = "lost";
    link.textContent = "connection to the watcher lost; retrying";
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      tries += 1;
      const wait = Math.min(60, 3 * 2 ** Math.min(tries - 1, 5)) * (0.75 + Math.random() / 2);
      setTimeout(connect, wait * 1000);
    }
  };
  source.onmessage = e => { apply(JSON.parse(e.data)); };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("filter").addEventListener("input", () => { limit = PAGE; render(); });
  document.getElementById("show-more").addEventListener("click", () => { limit += PAGE; render(); });
  connect();
  // at most one render a second for the data, and once a second for the ages
  setInterval(() => { if (dirty || fleet.header) render(); }, 1000);
  (function frame() { if (dirty) render(); setTimeout(frame, 250); })();
});
