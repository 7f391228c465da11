// seam-qc floor dashboard: polls /api/state once a second and updates one card per station in place.
// Bounded by construction: one card per station, at most the server's PAGE_ALERTS alerts per card
// (the list is rebuilt only when it changes), sparklines are one <polyline> whose points change.
"use strict";

const POLL_MS = 1000;
const ROTATE_MS = 15000; // a TV cannot scroll: when the cards overflow, page through them
const IDLE_MS = 60000; // ... but not while someone is using the screen
const DEFAULT_LABELS = ["error", "break", "length"];
const cards = new Map(); // station name → {el, refs, sig}
let lastVersion = -1;
let polls = 0;
let lastTouch = 0;
let toastTimer = null;

const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toFixed(digits);
}

function clockOf(ts) {
  if (!ts) return "--:--:--";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts).slice(11, 19) : d.toLocaleTimeString([], { hour12: false });
}

function toast(text, bad) {
  const t = $("toast");
  t.textContent = text;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
}

function makeCard(name) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.station = name;
  const q = (s) => node.querySelector(s);
  const refs = {
    name: q(".name"), status: q(".status"), defect: q(".defect"), fps: q(".fps"), health: q(".health"),
    dph: q(".dph"), img: q(".heatmap"), noheat: q(".noheat"), rates: q(".rates tbody"), alerts: q(".alerts"),
    chooser: q(".chooser"), rows: new Map(),
  };
  refs.name.textContent = name;
  return { el: node, refs, sig: "", heat: null };
}

function rateRow(refs, label) {
  let row = refs.rows.get(label);
  if (row) return row;
  const tr = el("tr");
  const lab = el("td", "lab " + label, label);
  const rate = el("td", "rate", "–");
  const spark = el("td");
  const svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("viewBox", "0 0 110 30");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(SVGNS, "polyline");
  svg.appendChild(line);
  spark.appendChild(svg);
  tr.append(lab, rate, spark);
  refs.rates.appendChild(tr);
  row = { tr, rate, line };
  refs.rows.set(label, row);
  return row;
}

function sparkPoints(counts) {
  const max = Math.max(1, ...counts);
  const step = counts.length > 1 ? 108 / (counts.length - 1) : 0;
  return counts.map((c, i) => `${(1 + i * step).toFixed(1)},${(28 - (c / max) * 26).toFixed(1)}`).join(" ");
}

function alertItem(station, a) {
  const li = el("li");
  li.dataset.event = a.event_id;
  const score = Object.values(a.scores || {});
  const best = score.length ? " " + Math.round(Math.max(...score) * 100) + "%" : "";
  li.append(el("span", "when", clockOf(a.ts)), el("span", "what", a.labels.join(" + ") + best));
  if (a.verdict) {
    li.append(el("span", "verdict " + a.verdict, a.verdict === "confirmed" ? "✔ confirmed" : "✘ false alarm"));
  } else {
    const acts = el("span", "acts");
    for (const [verdict, cls, text] of [["confirmed", "confirm", "Confirm"], ["false_alarm", "false", "False alarm"]]) {
      const b = el("button", cls, text);
      b.type = "button";
      b.dataset.action = "verdict";
      b.dataset.verdict = verdict;
      b.dataset.event = a.event_id;
      b.dataset.station = station;
      b.dataset.labels = JSON.stringify(a.labels);
      acts.append(b);
    }
    li.append(acts);
  }
  return li;
}

function renderStation(s, grid) {
  let card = cards.get(s.name);
  if (!card) {
    card = makeCard(s.name);
    cards.set(s.name, card);
    // keep the grid sorted by name (the server sends them sorted)
    const after = [...cards.keys()].sort().find((n) => n > s.name && cards.get(n).el.isConnected);
    grid.insertBefore(card.el, after ? cards.get(after).el : null);
  }
  const r = card.refs;
  const status = s.status || "unknown";
  if (card.el.dataset.status !== status) card.el.dataset.status = status;
  setText(r.status, status === "unknown" ? "?" : status.toUpperCase());
  r.defect.hidden = s.defect !== true;
  setText(r.fps, fmt(s.fps, 1));
  const health = s.health === null ? "–" : s.health;
  setText(r.health, health);
  r.health.classList.toggle("long", health.length > 6);
  r.health.title = health;
  card.el.dataset.health = s.health === null || s.health === "ok" ? "ok" : "bad";
  const total = Object.values(s.rates).reduce((x, y) => x + y, 0);
  setText(r.dph, fmt(Object.keys(s.rates).length ? total : s.stats_defects_per_hour, 0));
  for (const [label, counts] of Object.entries(s.trend)) {
    const row = rateRow(r, label);
    setText(row.rate, fmt(s.rates[label], 0) + "/h");
    const pts = sparkPoints(counts);
    if (row.line.getAttribute("points") !== pts) row.line.setAttribute("points", pts);
  }
  if (s.heatmap !== card.heat) {
    card.heat = s.heatmap;
    if (s.heatmap === null) {
      r.img.hidden = true;
      r.img.removeAttribute("src");
    } else {
      r.img.src = "/heatmap?station=" + encodeURIComponent(s.name) + "&v=" + s.heatmap;
      r.img.hidden = false;
    }
    r.noheat.hidden = s.heatmap !== null;
    r.img.title = s.heatmap_event ? "event " + s.heatmap_event : "";
  }
  const sig = s.alerts.map((a) => a.event_id + ":" + (a.verdict || "")).join("|");
  if (sig !== card.sig) {
    card.sig = sig;
    r.alerts.replaceChildren(...s.alerts.map((a) => alertItem(s.name, a)));
  }
}

function render(state) {
  const grid = $("grid");
  for (const s of state.stations) renderStation(s, grid);
  const offline = state.stations.filter((s) => s.status === "offline").map((s) => s.name);
  const sick = state.stations.filter((s) => s.health && s.health !== "ok").map((s) => s.name + " (" + s.health + ")");
  const defect = state.stations.filter((s) => s.defect === true).map((s) => s.name);
  const online = state.stations.filter((s) => s.status === "online").length;
  const summary = $("summary");
  const parts = [el("span", "", `${state.stations.length} stations · ${online} online`)];
  if (offline.length) parts.push(el("span", "bad", ` · ${offline.length} offline`));
  if (sick.length) parts.push(el("span", "warn", ` · ${sick.length} camera warnings`));
  summary.replaceChildren(...parts);
  const attention = [];
  if (offline.length) attention.push("OFFLINE: " + offline.join(", "));
  if (defect.length) attention.push("DEFECT: " + defect.join(", "));
  if (sick.length) attention.push("CAMERA: " + sick.join(", "));
  const att = $("attention");
  setText(att, attention.join("   ·   "));
  att.hidden = attention.length === 0;
  const broker = $("broker");
  setText(broker, (state.broker.connected ? "broker " : "BROKER DOWN ") + state.broker.address);
  broker.className = state.broker.connected ? "broker" : "broker down";
}

async function poll() {
  try {
    const res = await fetch("/api/state", { cache: "no-store", credentials: "same-origin" });
    if (res.status === 401) throw new Error("token needed: open this page once as /?token=…");
    if (!res.ok) throw new Error("dashboard answered " + res.status);
    const state = await res.json();
    $("problem").hidden = true;
    if (state.version !== lastVersion) {
      lastVersion = state.version;
      render(state);
    }
    document.body.dataset.version = String(lastVersion);
  } catch (e) {
    const p = $("problem");
    setText(p, "No data from the dashboard server: " + e.message);
    p.hidden = false;
  } finally {
    polls += 1;
    document.body.dataset.polls = String(polls);
    setTimeout(poll, POLL_MS);
  }
}

async function send(body) {
  try {
    const res = await fetch("/api/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(answer.error || "status " + res.status);
    return true;
  } catch (e) {
    toast("Not sent: " + e.message, true);
    return false;
  }
}

function showChooser(station) {
  const card = cards.get(station);
  if (!card) return;
  const labels = [...new Set([...DEFAULT_LABELS, ...card.refs.rows.keys()])];
  const buttons = labels.map((label) => {
    const b = el("button", "lab " + label, label);
    b.type = "button";
    b.dataset.action = "missed-label";
    b.dataset.station = station;
    b.dataset.label = label;
    return b;
  });
  const cancel = el("button", "", "Cancel");
  cancel.type = "button";
  cancel.dataset.action = "missed-cancel";
  cancel.dataset.station = station;
  card.refs.chooser.replaceChildren(...buttons, cancel);
  card.refs.chooser.hidden = false;
}

document.addEventListener("click", async (ev) => {
  lastTouch = Date.now();
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  const station = b.dataset.station || b.closest(".card")?.dataset.station;
  const action = b.dataset.action;
  if (action === "verdict") {
    b.disabled = true;
    const ok = await send({
      station, event_id: b.dataset.event, verdict: b.dataset.verdict, labels: JSON.parse(b.dataset.labels || "[]"),
    });
    if (ok) toast(`${station}: ${b.dataset.verdict === "confirmed" ? "confirmed" : "false alarm"} sent`);
    else b.disabled = false;
  } else if (action === "missed") {
    showChooser(station);
  } else if (action === "missed-label") {
    const ok = await send({ station, missed: true, labels: [b.dataset.label] });
    if (ok) toast(`${station}: missed ${b.dataset.label} defect sent`);
    const card = cards.get(station);
    if (card) { card.refs.chooser.replaceChildren(); card.refs.chooser.hidden = true; }
  } else if (action === "missed-cancel") {
    const card = cards.get(station);
    if (card) { card.refs.chooser.replaceChildren(); card.refs.chooser.hidden = true; }
  }
});
for (const kind of ["pointerdown", "keydown", "wheel"]) {
  document.addEventListener(kind, () => { lastTouch = Date.now(); }, { passive: true });
}

function tick() {
  setText($("clock"), new Date().toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" }));
}

function rotate() {
  const rotating = new URLSearchParams(location.search).get("rotate") !== "0";
  const room = document.documentElement.scrollHeight - window.innerHeight;
  if (!rotating || room <= 0 || Date.now() - lastTouch < IDLE_MS) return;
  const next = window.scrollY + window.innerHeight * 0.9;
  window.scrollTo({ top: next >= room + window.innerHeight * 0.5 ? 0 : Math.min(next, room) });
}

tick();
setInterval(tick, 5000);
setInterval(rotate, ROTATE_MS);
poll();
